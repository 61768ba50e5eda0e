"""workzone: is there road work in this image? A calibrated probability with the evidence behind it.

Public API::

    import workzone
    with workzone.load_pipeline("default") as pipe:
        decision = pipe.predict("dashcam.jpg")
        print(decision.probability, decision.label, decision.exit_tier_name)
        print(workzone.public_answer(decision))   # the JSON the server, the CLI and batch jobs emit
"""

from workzone.answer import public_answer
from workzone.api import Pipeline, load_pipeline
from workzone.cascade import Cascade, TierEvent
from workzone.config.loader import load_pipeline_config, parse_pipeline
from workzone.errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    DeadlineExceeded,
    InvalidImageError,
    MissingExtraError,
    ModelFileError,
    StageError,
    UnknownStageKind,
    WorkzoneError,
)
from workzone.io.images import ImageLimits, decode_image
from workzone.stages.base import Stage, StageContext, StageParams
from workzone.stages.registry import create_stage, list_stages, register_stage
from workzone.types import Box, Decision, Evidence, FrameRef, Image, StageOutput, StageReport, TextRead

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "Box", "Cascade", "ConfigError", "DataError", "DeadlineExceeded", "Decision",
    "Evidence", "FrameRef", "Image", "ImageLimits", "InvalidImageError", "MissingExtraError", "ModelFileError",
    "Pipeline", "Stage", "StageContext", "StageError", "StageOutput", "StageParams", "StageReport",
    "TextRead", "TierEvent", "UnknownStageKind", "WorkzoneError", "create_stage", "decode_image",
    "list_stages", "load_pipeline", "load_pipeline_config", "parse_pipeline", "public_answer", "register_stage",
    "__version__",
]
