"""Pipeline configuration: schema and YAML loader."""

from workzone.config.loader import dump_pipeline, load_pipeline_config, parse_pipeline
from workzone.config.schema import ExitThresholds, FusionParams, PipelineConfig, StageSpec, TierConfig

__all__ = ["ExitThresholds", "FusionParams", "PipelineConfig", "StageSpec", "TierConfig",
           "dump_pipeline", "load_pipeline_config", "parse_pipeline"]
