"""GPU memory plans for pipelines (``workzone plan``), in three parts: the model table
(:mod:`~workzone.planning.models`), placement (:mod:`~workzone.planning.placement`) and engine launch
commands (:mod:`~workzone.planning.launch`). The pre-flight checks are in :mod:`workzone.checking`.
"""

from workzone.planning.launch import describe_item, launch_commands
from workzone.planning.models import MODEL_TABLE, GiB, ModelSpec, lookup_model
from workzone.planning.placement import GpuSpec, Item, Plan, Quant, parse_gpus, plan_pipeline

__all__ = ["ModelSpec", "MODEL_TABLE", "GiB", "lookup_model", "Quant", "GpuSpec", "parse_gpus", "Item", "Plan",
           "plan_pipeline", "launch_commands", "describe_item"]
