"""Pre-flight checks for pipelines (``workzone check``): extras installed, model files present, endpoints up.

Nothing here loads a model or imports a backend: modules are looked up with ``find_spec``, files
with ``Path.exists``, and endpoints (only when asked) with one ``GET {base_url}/models``. The GPU
memory plan (``workzone plan``) is in :mod:`workzone.planning`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from workzone.config.schema import PipelineConfig, StageSpec
from workzone.stages.base import StageContext

__all__ = ["KIND_REQUIREMENTS", "ENGINE_KINDS", "missing_modules", "nested_stages", "CheckRow", "check_pipeline"]

#: kind -> (extra, modules it imports). ``workzone check`` looks each module up without importing it.
KIND_REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnx_classifier": ("default", ("onnxruntime",)),
    "onnx_detector": ("default", ("onnxruntime",)),
    "roadwork_detector": ("default", ("onnxruntime",)),
    "sign_ocr": ("default", ("rapidocr_onnxruntime", "cv2")),
    "ultralytics": ("detect", ("ultralytics", "torch", "torchvision")),
    "rfdetr": ("rfdetr", ("rfdetr", "torch", "torchvision")),
    "hf_zero_shot_detection": ("hf", ("transformers", "torch")),
    "hf_image_classification": ("hf", ("transformers", "torch")),
    "hf_zero_shot_image": ("hf", ("transformers", "torch")),
    "hf_depth": ("hf", ("transformers", "torch")),
    "hf_segmentation": ("hf", ("transformers", "torch")),
    "hf_clip_anomaly": ("hf", ("transformers", "torch")),
    "patch_anomaly": ("default", ("onnxruntime",)),
    "vlm_openai": ("vlm", ("httpx", "tenacity")),
    "reasoner_openai": ("vlm", ("httpx", "tenacity")),
    "vlm_transformers": ("vlm-local", ("transformers", "torch", "torchvision")),
    "temporal_consistency": ("default", ()),
}

#: Kinds whose model is served by an engine (vLLM, SGLang, LMDeploy) rather than loaded in-process.
ENGINE_KINDS = ("vlm_openai", "reasoner_openai")


def missing_modules(kind: str) -> tuple[str, list[str]] | None:
    """``(extra, missing module names)`` for a kind, or ``None`` when the kind is not in the table."""
    req = KIND_REQUIREMENTS.get(kind)
    if req is None:
        return None
    extra, modules = req
    return extra, [m for m in modules if find_spec(m) is None]


def nested_stages(st: StageSpec) -> list[StageSpec]:
    """The detector an ``hf_depth`` or ``hf_segmentation`` stage wraps (same process, same device)."""
    spec = getattr(st.params, "detector", None)
    if st.kind not in ("hf_depth", "hf_segmentation") or not isinstance(spec, dict):
        return []
    from workzone.config.loader import validate_params
    from workzone.stages.registry import get_stage_class

    raw = {k: v for k, v in spec.items() if k != "kind"}
    cls = get_stage_class(spec["kind"])
    name = f"{st.name}.detector"
    return [StageSpec(name=name, kind=cls.kind, device=st.device, params=validate_params(cls, name, raw))]


@dataclass(frozen=True)
class CheckRow:
    """One line of ``workzone check``: ``ok`` is True, False (a problem) or None (skipped)."""

    stage: str
    kind: str
    check: str
    ok: bool | None
    detail: str = ""


_FILE_SUFFIXES = (".onnx", ".pt", ".pth", ".engine", ".torchscript", ".safetensors", ".yaml", ".txt", ".npz")


def check_pipeline(config: PipelineConfig, base_dir: Path, *, endpoints: bool = False,
                   timeout_s: float = 5.0) -> list[CheckRow]:
    """Check what can be checked before loading: extras installed, model files present, endpoints up.

    The pipeline's shape and kinds were validated when ``config`` was parsed.
    """
    ctx = StageContext(base_dir=base_dir)
    rows: list[CheckRow] = []
    for tier in config.tiers:
        for st in tier.stages:
            if not st.enabled:
                rows.append(CheckRow(st.name, st.kind, "enabled", None, "disabled in the pipeline"))
                continue
            req = missing_modules(st.kind)
            if req is None:
                rows.append(CheckRow(st.name, st.kind, "extras", None, "third-party kind: not checked"))
            else:
                extra, missing = req
                detail = (f"missing {', '.join(missing)}: pip install 'workzone[{extra}]'" if missing
                          else f"[{extra}] installed")
                rows.append(CheckRow(st.name, st.kind, "extras", not missing, detail))
            for part in [st, *nested_stages(st)]:
                rows.extend(_file_rows(part, ctx))
            if st.engine is not None:
                rows.append(_engine_row(st))
            if endpoints and st.kind in ENGINE_KINDS:
                rows.append(_endpoint_row(st, timeout_s))
    return rows


def _file_rows(st: StageSpec, ctx: StageContext) -> list[CheckRow]:
    rows = []
    for key in ("model", "lexicon", "class_names", "bank"):
        value = getattr(st.params, key, None)
        if not isinstance(value, str) or not value:
            continue
        local = value.startswith(("builtin:", "./", "../", "/", "~")) or value.lower().endswith(_FILE_SUFFIXES)
        if not local or st.kind in ENGINE_KINDS:
            continue  # a hub id is fetched at load time; an engine's model lives on its server
        path = ctx.resolve(value)
        if st.kind == "ultralytics" and getattr(st.params, "allow_download", False) and not path.exists():
            rows.append(CheckRow(st.name, st.kind, key, None, f"{value} will be downloaded (allow_download)"))
            continue
        rows.append(CheckRow(st.name, st.kind, key, path.exists(), str(path) if path.exists() else f"{path} does not exist"))
    return rows


def _engine_row(st: StageSpec) -> CheckRow:
    """An ``engine:`` block: only on engine-served kinds, and only what its servers support."""
    from workzone.engine_options import check_engine_options
    from workzone.errors import ConfigError

    if st.kind not in ENGINE_KINDS:
        return CheckRow(st.name, st.kind, "engine", False, f"engine: applies to {', '.join(ENGINE_KINDS)} only")
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
