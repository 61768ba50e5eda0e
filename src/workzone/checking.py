"""Pre-flight checks for pipelines (``workzone check``): extras installed, model files present, downloads
possible, endpoints up.

What each kind needs is read from its class in the registry (``extra``, ``requires``, ``runs_on``,
``downloads_from``, :meth:`~workzone.stages.base.Stage.packaged_model`); nothing here loads a model
or imports a backend: modules are looked up with ``find_spec``, files with ``Path.exists``, a model
that would be downloaded with one TCP connection to its host, and endpoints (only when asked) with
one ``GET {base_url}/models``. The GPU memory plan (``workzone plan``) is in :mod:`workzone.planning`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from workzone.config.schema import PipelineConfig, StageSpec
from workzone.stages.base import Stage, StageContext
from workzone.stages.registry import get_stage_class, list_stages

__all__ = ["missing_modules", "CheckRow", "check_pipeline", "host_reachable", "require_runnable"]


def missing_modules(kind: str) -> tuple[str, list[str]]:
    """``(extra, missing module names)`` for a kind, from its class's ``extra`` and ``requires``."""
    cls = get_stage_class(kind)
    return cls.extra, [m for m in cls.requires if find_spec(m) is None]


@dataclass(frozen=True)
class CheckRow:
    """One line of ``workzone check``: ``ok`` is True, False (a problem) or None (skipped)."""

    stage: str
    kind: str
    check: str
    ok: bool | None
    detail: str = ""


def host_reachable(host: str, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:443`` opens within ``timeout_s`` (no data is sent)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


_FILE_SUFFIXES = (".onnx", ".pt", ".pth", ".engine", ".torchscript", ".safetensors", ".yaml", ".txt", ".npz")


def check_pipeline(config: PipelineConfig, base_dir: Path, *, endpoints: bool = False, timeout_s: float = 5.0,
                   reachable: Callable[[str], bool] = host_reachable) -> list[CheckRow]:
    """Check what can be checked before loading: extras, model files, downloads, endpoints.

    The pipeline's shape and kinds were validated when ``config`` was parsed.

    Args:
        reachable: says whether a download host answers (asked once per host).
    """
    ctx = StageContext(base_dir=base_dir)
    hosts: dict[str, bool] = {}

    def can_reach(host: str) -> bool:
        if host not in hosts:
            hosts[host] = reachable(host)
        return hosts[host]

    rows: list[CheckRow] = []
    for tier in config.tiers:
        for st in tier.stages:
            if not st.enabled:
                rows.append(CheckRow(st.name, st.kind, "enabled", None, "disabled in the pipeline"))
                continue
            extra, missing = missing_modules(st.kind)
            detail = (f"missing {', '.join(missing)}: pip install 'workzone[{extra}]'" if missing
                      else f"[{extra}] installed")
            rows.append(CheckRow(st.name, st.kind, "extras", not missing, detail))
            for part in [st, *st.nested()]:
                rows.extend(_file_rows(part, ctx, can_reach))
            if st.engine is not None:
                rows.append(_engine_row(st))
            if endpoints and get_stage_class(st.kind).runs_on == "engine":
                rows.append(_endpoint_row(st, timeout_s))
    return rows


def _file_rows(st: StageSpec, ctx: StageContext, can_reach: Callable[[str], bool]) -> list[CheckRow]:
    cls = get_stage_class(st.kind)
    if cls.runs_on == "engine":
        return []  # an engine's model lives on its server (--endpoints checks it)
    rows = []
    for key in ("model", "lexicon", "class_names", "bank"):
        value = getattr(st.params, key, None)
        if not isinstance(value, str) or not value:
            continue
        if key == "model" and cls.packaged_model(value):
            rows.append(CheckRow(st.name, st.kind, key, True, f"{value} ships with the {cls.extra} extra's library"))
            continue
        local = value.startswith(("builtin:", "./", "../", "/", "~")) or value.lower().endswith(_FILE_SUFFIXES)
        path = ctx.resolve(value)
        if path.exists():
            rows.append(CheckRow(st.name, st.kind, key, True, str(path)))
        elif local and not (getattr(st.params, "allow_download", False) and "/" not in value):
            rows.append(CheckRow(st.name, st.kind, key, False, f"{path} does not exist"))
        elif key == "model" and cls.downloads_from:
            rows.append(_download_row(st, cls, value, can_reach))
    return rows


def _download_row(st: StageSpec, cls: type[Stage], model: str, can_reach: Callable[[str], bool]) -> CheckRow:
    if cls.cached_model(model):
        return CheckRow(st.name, st.kind, "download", True, f"{model} is in the local cache")
    host = cls.downloads_from or ""
    if can_reach(host):
        return CheckRow(st.name, st.kind, "download", None, f"{model} will be downloaded from {host} when it loads")
    return CheckRow(st.name, st.kind, "download", False,
                    f"{model} must be downloaded from {host}, which is not reachable from here (no network?); "
                    "download it where there is network, or point model at a local copy")


def _engine_row(st: StageSpec) -> CheckRow:
    """An ``engine:`` block: only on engine-served kinds, and only what its servers support."""
    from workzone.engine_options import check_engine_options
    from workzone.errors import ConfigError

    if get_stage_class(st.kind).runs_on != "engine":
        engine_kinds = [k for k in list_stages() if get_stage_class(k).runs_on == "engine"]
        return CheckRow(st.name, st.kind, "engine", False, f"engine: applies to {', '.join(engine_kinds)} only")
    quant = st.engine.quantization or "none"
    try:
        check_engine_options(st.name, st.engine, quant)
    except ConfigError as exc:
        return CheckRow(st.name, st.kind, "engine", False, str(exc))
    return CheckRow(st.name, st.kind, "engine", True, f"quantization {quant}, KV cache {st.engine.kv_cache_dtype}, "
                                                      f"servers {', '.join(st.engine.servers)}")


def _endpoint_row(st: StageSpec, timeout_s: float) -> CheckRow:
    import os

    try:
        import httpx
    except ImportError:
        return CheckRow(st.name, st.kind, "endpoint", False, "httpx missing: pip install 'workzone[vlm]'")
    p = st.params
    url = str(getattr(p, "base_url")).rstrip("/") + "/models"
    headers = {}
    key_env = getattr(p, "api_key_env", None)
    if key_env and os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return CheckRow(st.name, st.kind, "endpoint", False, f"GET {url}: {type(exc).__name__}: {exc}")
    if resp.status_code != 200:
        return CheckRow(st.name, st.kind, "endpoint", False, f"GET {url}: HTTP {resp.status_code}")
    try:
        served = [m.get("id") for m in resp.json().get("data", [])]
    except (ValueError, AttributeError) as exc:
        return CheckRow(st.name, st.kind, "endpoint", False, f"GET {url}: not an OpenAI model list ({exc})")
    model = getattr(p, "model")
    if model not in served:
        return CheckRow(st.name, st.kind, "endpoint", False, f"{url} serves {served}, not {model!r}")
    return CheckRow(st.name, st.kind, "endpoint", True, f"{url} serves {model}")


def require_runnable(config: PipelineConfig, base_dir: Path, *, what: str, reference: str) -> None:
    """Refuse before any work (binding a port, reading inputs) what ``workzone check`` would report.

    Extras and model files are checked, offline (a model that would be downloaded counts as fine
    here; the stage says so when it loads).

    Args:
        what: the command, for the message (``workzone serve``).
        reference: the pipeline as the user named it, for the ``workzone check`` hint.

    Raises:
        MissingExtraError: a stage's extra is not installed (the message lists every problem).
        ModelFileError: a model file is missing.
    """
    from workzone.errors import MissingExtraError, ModelFileError

    problems = [r for r in check_pipeline(config, base_dir, reachable=lambda host: True) if r.ok is False]
    if not problems:
        return
    listed = "; ".join(f"stage {r.stage!r} (kind {r.kind}) {r.check}: {r.detail}" for r in problems)
    message = (f"{what} refused before starting: pipeline {config.name!r} cannot run here: {listed} "
               f"(`workzone check {reference}` shows every check)")
    extras = [r for r in problems if r.check == "extras"]
    if extras:
        extra, missing = missing_modules(extras[0].kind)
        raise MissingExtraError(missing[0] if missing else extras[0].kind, extra, message=message)
    raise ModelFileError(message)
