"""YAML -> :class:`PipelineConfig`, with errors that name the file, line, stage and key.

Built-in pipelines are addressed by name (``default``), files by path.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path, PurePath
from typing import Any

import yaml
from pydantic import ValidationError

from workzone.config.schema import COMMON_STAGE_KEYS, PipelineConfig, StageSpec, TierConfig
from workzone.errors import ConfigError, UnknownStageKind
from workzone.stages.registry import get_stage_class, validate_params

__all__ = ["load_pipeline_config", "parse_pipeline", "dump_pipeline", "builtin_pipeline_path", "builtin_pipelines"]

_BUILTIN_DIR = Path(__file__).resolve().parent.parent / "pipelines"


def builtin_pipelines() -> list[str]:
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


def builtin_pipeline_path(name: str) -> Path:
    return _BUILTIN_DIR / f"{name}.yaml"


def load_pipeline_config(ref: str | Path) -> tuple[PipelineConfig, Path]:
    """Read a pipeline by built-in name or path.

    Returns:
        The validated config and the file it came from (relative model paths resolve against its folder).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    path = Path(ref)
    if not path.suffix and not path.exists():
        if str(ref) not in builtin_pipelines():
            raise ConfigError(
                f"no pipeline file {ref!r} and no built-in pipeline of that name; built-in: {', '.join(builtin_pipelines())}"
            )
        path = builtin_pipeline_path(str(ref))
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist")
    return parse_pipeline(path.read_text(encoding="utf-8"), str(path)), path


def parse_pipeline(text: str, filename: str = "<pipeline>") -> PipelineConfig:
    """Parse and validate pipeline YAML text."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, filename)) from exc
    if node is None:
        raise ConfigError(f"{filename}: the file is empty")
    lines: dict[tuple, int] = {}
    data = _to_python(node, (), lines)
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:1: a pipeline must be a mapping with a 'tiers' list")
    tiers = data.get("tiers")
    if isinstance(tiers, list):
        for ti, tier in enumerate(tiers):
            stages = tier.get("stages") if isinstance(tier, dict) else None
            if not isinstance(stages, list):
                continue
            for si, st in enumerate(stages):
                if isinstance(st, dict):
                    stages[si] = _split_stage(st, filename, lines, ("tiers", ti, "stages", si))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, filename, lines, data)) from exc


def _split_stage(entry: dict, filename: str, lines: dict, loc: tuple) -> dict:
    """Validate a stage entry's kind-specific keys against that kind's Params model."""
    where = f"{filename}:{lines.get(loc, '?')}"
    name = entry.get("name", "<unnamed>")
    kind = entry.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: stage {name!r} has no 'kind'")
    try:
        cls = get_stage_class(kind)
    except UnknownStageKind as exc:
        raise UnknownStageKind(kind, exc.known, where=f"{where}: stage {name!r}") from None
    except ImportError as exc:
        raise ConfigError(f"{where}: stage {name!r} (kind {kind}): cannot import its module: {exc}") from exc
    common = {k: v for k, v in entry.items() if k in COMMON_STAGE_KEYS}
    raw = {k: v for k, v in entry.items() if k not in COMMON_STAGE_KEYS}
    if "params" in raw and isinstance(raw["params"], dict) and len(raw) == 1:
        raw = raw["params"]  # also accept an explicit `params:` mapping
    def locate(key: object) -> str:
        return f"{filename}:{lines.get(loc + (key,)) or lines.get(loc, '?')}"

    common["params"] = validate_params(cls, str(name), raw, locate=locate)
    common["kind"] = cls.kind
    return common


def _yaml_error(exc: yaml.YAMLError, filename: str) -> str:
    """``file:line: not valid YAML: problem`` (PyYAML's own text names ``<unicode string>``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    line = f":{mark.line + 1}" if mark is not None else ""
    return f"{filename}{line}: not valid YAML: {problem or exc}"


def _format_errors(exc: ValidationError, filename: str, lines: dict, data: Any) -> str:
    msgs = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # A cross-field check names where it failed (PipelineConfig's fusion-weight check does).
        cause = (err.get("ctx") or {}).get("error")
        loc += tuple(getattr(cause, "loc", ()))
        # Find the deepest location we have a line for.
        line = "?"
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        stage = _stage_name(data, loc)
        key = ".".join(str(p) for p in loc) or "(top level)"
        what = "unknown key" if err["type"] == "extra_forbidden" else (str(cause) if cause else err["msg"])
        prefix = f"stage {stage!r}: " if stage else ""
        msgs.append(f"{filename}:{line}: {prefix}{key}: {what}")
    return "\n".join(msgs)


def _stage_name(data: Any, loc: tuple) -> str | None:
    if len(loc) >= 4 and loc[0] == "tiers" and loc[2] == "stages":
        try:
            return data["tiers"][loc[1]]["stages"][loc[3]].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
    return None


def _to_python(node: yaml.Node, path: tuple, lines: dict) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = k.value  # pipeline keys are plain scalars
            out[key] = _to_python(v, path + (key,), lines)
            lines[path + (key,)] = k.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), lines) for i, v in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def dump_pipeline(cfg: PipelineConfig) -> str:
    """Serialise a config to YAML in the flat form :func:`parse_pipeline` reads; its exact inverse.

    Every field of the schema is written when it differs from its default (so a tuned pipeline keeps
    its routers, engines and every key nobody fitted), and a stage's params are merged into its entry
    as the loader expects. ``parse_pipeline(dump_pipeline(cfg)) == cfg`` for every valid config.
    """
    doc: dict[str, Any] = {"name": cfg.name}
    rest = cfg.model_dump(exclude={"name", "tiers"}, exclude_defaults=True)
    doc.update({k: v for k, v in rest.items() if k != "tuning"})
    doc["version"] = cfg.version  # always written: it says which schema the file follows
    doc["tiers"] = [_dump_tier(tier) for tier in cfg.tiers]
    if cfg.tuning:
        doc["tuning"] = cfg.tuning
    return yaml.safe_dump(_plain(doc), sort_keys=False, allow_unicode=True, width=100)


def _dump_tier(tier: TierConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tier.name, "stages": [_dump_stage(st) for st in tier.stages]}
    # fusion is written even when untuned: a reader sees what the tier pools with
    out["fusion"] = tier.fusion.model_dump(exclude_none=True)
    out.update(tier.model_dump(exclude={"name", "stages", "fusion"}, exclude_defaults=True))
    return out


def _dump_stage(st: StageSpec) -> dict[str, Any]:
    entry = st.model_dump(exclude={"params"}, exclude_defaults=True)
    # a kind's params are written as given (exclude_unset): the kind's own defaults stay its own
    entry.update(st.params.model_dump(mode="json", exclude_unset=True))
    return entry


def _plain(value: Any) -> Any:
    """Tuples, paths and enums as the YAML scalars and lists the loader reads back into them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    return value
