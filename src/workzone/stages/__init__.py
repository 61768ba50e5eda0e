"""Stage interface and registry. Importing this package imports no heavy dependency."""

from workzone.stages.base import Stage, StageContext, StageParams
from workzone.stages.registry import (
    StageRegistry,
    create_stage,
    default_registry,
    get_stage_class,
    is_stage,
    list_stages,
    register_stage,
)

__all__ = ["Stage", "StageContext", "StageParams", "StageRegistry", "create_stage", "default_registry",
           "get_stage_class", "is_stage", "list_stages", "register_stage"]
