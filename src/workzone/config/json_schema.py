"""The pipeline file's JSON Schema, built from the registry (``workzone schema``), for editors.

A stage entry is written flat (``{name, kind, timeout_s, ..., <the kind's params>}``), so the schema
of a stage is one object per kind, chosen by ``kind``: the cascade's keys plus that kind's ``Params``.
Validation itself stays with :func:`workzone.config.loader.parse_pipeline` (it also checks what a
schema cannot: stage names unique, fusion weights naming earlier stages, nested stage specs).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, create_model

from workzone.config.schema import COMMON_STAGE_KEYS, PipelineConfig, StageSpec, TierConfig
from workzone.stages.registry import get_stage_class, list_stages

__all__ = ["pipeline_json_schema", "pipeline_schema_model"]


def pipeline_json_schema(kinds: list[str] | None = None) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a pipeline YAML file whose stages are of ``kinds`` (default: all registered).

    Imports each kind's module (light: heavy libraries load only when a stage loads).
    """
    schema = TypeAdapter(pipeline_schema_model(kinds)).json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "workzone pipeline"}


def pipeline_schema_model(kinds: list[str] | None = None) -> type:
    """The pydantic model the schema is generated from: a pipeline file as written (stages flat)."""
    entries = []
    for kind in kinds or list_stages():
        cls = get_stage_class(kind)
        common = {key: (StageSpec.model_fields[key].annotation, StageSpec.model_fields[key])
                  for key in COMMON_STAGE_KEYS if key != "kind"}
        entries.append(create_model(f"{cls.__name__}Entry", __base__=cls.Params, __doc__=(cls.__doc__ or "").strip(),
                                    kind=(Literal[kind], Field(description=f"stage kind {kind}")), **common))
    stage = Annotated[Union[tuple(entries)], Field(discriminator="kind")]  # type: ignore[valid-type]
    tier = create_model("Tier", __base__=TierConfig, stages=(tuple[stage, ...], Field(min_length=1)))  # type: ignore[valid-type]
    return create_model("Pipeline", __base__=PipelineConfig, tiers=(tuple[tier, ...], Field(min_length=1)))  # type: ignore[valid-type]
