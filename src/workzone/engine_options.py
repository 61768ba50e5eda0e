"""Per-stage serving options of a VLM / LLM engine (``engine:`` on a ``vlm_openai`` or ``reasoner_openai`` stage).

``workzone plan`` reads them: quantisation changes the weights' bytes, the KV-cache dtype the
cache's, ``max_model_len`` and ``image_tokens`` the context the cache is sized for; and each
engine's launch command gets the matching flags. What an engine cannot do is refused here, with
the engines that can, rather than printed as a command that fails at start-up.

Support (vLLM / SGLang / LMDeploy, as of their 2026 releases):

| option | vLLM | SGLang | LMDeploy |
| --- | --- | --- | --- |
| quantization fp8 | ``--quantization fp8`` | ``--quantization fp8`` | ``--model-format fp8`` |
| quantization int8 (W8A8 checkpoint) | read from the checkpoint | ``--quantization w8a8_int8`` | refused |
| quantization awq / gptq | ``--quantization awq / gptq`` | ``--quantization awq / gptq`` | ``--model-format awq / gptq`` |
| quantization nvfp4 | ``--quantization modelopt_fp4`` | ``--quantization modelopt_fp4`` | refused |
| kv_cache_dtype fp8 (e4m3 / e5m2) | ``--kv-cache-dtype`` | ``--kv-cache-dtype fp8_e4m3 / fp8_e5m2`` | refused |
| kv_cache_dtype int8 / int4 | refused | refused | ``--quant-policy 8 / 4`` |
| prefix_caching | on by default; off: ``--no-enable-prefix-caching`` | radix cache on; off: ``--disable-radix-cache`` | ``--enable-prefix-caching`` |
| image_tokens | ``--mm-processor-kwargs {"max_pixels": ...}`` | the stage's ``max_pixels`` only | the stage's ``max_pixels`` only |
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workzone.errors import ConfigError

__all__ = ["EngineOptions", "Server", "SERVERS", "QUANT_BYTES", "KV_BYTES", "unsupported", "check_engine_options",
           "engine_flags"]

Server = Literal["vllm", "sglang", "lmdeploy"]
SERVERS: tuple[str, ...] = ("vllm", "sglang", "lmdeploy")

#: Bytes per parameter of the quantised linear layers (scales included).
QUANT_BYTES: dict[str, float] = {"none": 2.0, "fp8": 1.0, "int8": 1.0, "awq": 0.53, "gptq": 0.53, "nvfp4": 0.5625}
#: Bytes per KV-cache element.
KV_BYTES: dict[str, float] = {"auto": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "int8": 1.0, "int4": 0.5}

_QUANT_FLAGS: dict[str, dict[str, str | None]] = {
    "vllm": {"fp8": "--quantization fp8", "int8": None, "awq": "--quantization awq", "gptq": "--quantization gptq",
             "nvfp4": "--quantization modelopt_fp4"},
    "sglang": {"fp8": "--quantization fp8", "int8": "--quantization w8a8_int8", "awq": "--quantization awq",
               "gptq": "--quantization gptq", "nvfp4": "--quantization modelopt_fp4"},
    "lmdeploy": {"fp8": "--model-format fp8", "awq": "--model-format awq", "gptq": "--model-format gptq"},
}
_KV_FLAGS: dict[str, dict[str, str]] = {
    "vllm": {"fp8": "--kv-cache-dtype fp8", "fp8_e4m3": "--kv-cache-dtype fp8_e4m3",
             "fp8_e5m2": "--kv-cache-dtype fp8_e5m2"},
    "sglang": {"fp8": "--kv-cache-dtype fp8_e4m3", "fp8_e4m3": "--kv-cache-dtype fp8_e4m3",
               "fp8_e5m2": "--kv-cache-dtype fp8_e5m2"},
    "lmdeploy": {"int8": "--quant-policy 8", "int4": "--quant-policy 4"},
}


class EngineOptions(BaseModel):
    """How the engine behind one stage is served; unset values take the plan's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantization: Literal["none", "fp8", "int8", "awq", "gptq", "nvfp4"] | None = Field(
        default=None, description="weights; None: the plan's --quant")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"] = "auto"
    prefix_caching: bool = True
    max_model_len: int | None = Field(default=None, ge=512, le=1_048_576, description="context the cache is sized for")
    image_tokens: int | None = Field(default=None, ge=16, le=65_536, description="most visual tokens per image")
    servers: tuple[Server, ...] = Field(default=SERVERS, min_length=1, description="engines this stage may be served by")


def unsupported(server: str, quant: str, opts: EngineOptions | None) -> str | None:
    """Why ``server`` cannot serve ``quant`` with ``opts`` (the option and the engines that can), or None."""
    opts = opts or EngineOptions()
    if quant != "none" and quant not in _QUANT_FLAGS[server]:
        ok = [s for s in SERVERS if quant in _QUANT_FLAGS[s]]
        return f"quantization {quant} is not supported by {server}; it is by {' and '.join(ok)}"
    if opts.kv_cache_dtype != "auto" and opts.kv_cache_dtype not in _KV_FLAGS[server]:
        ok = [s for s in SERVERS if opts.kv_cache_dtype in _KV_FLAGS[s]]
        return f"kv_cache_dtype {opts.kv_cache_dtype} is not supported by {server}; it is by {' and '.join(ok)}"
    return None


def check_engine_options(stage: str, opts: EngineOptions, quant: str) -> None:
    """Refuse a combination one of ``opts.servers`` does not support, naming the engines that do.

    Raises:
        ConfigError: e.g. ``stage 'vlm32b': quantization nvfp4 is not supported by lmdeploy; it is by
            vllm and sglang: list only those under engine.servers, or pick another``.
    """
    for server in opts.servers:
        why = unsupported(server, quant, opts)
        if why is not None:
            ok = [s for s in opts.servers if unsupported(s, quant, opts) is None]
            fix = f"set engine: {{servers: [{', '.join(ok)}]}}" if ok else "no engine listed can serve it"
            raise ConfigError(f"stage {stage!r}: {why}: {fix}, or pick another option")


def engine_flags(server: str, quant: str, opts: EngineOptions | None, *, px_per_token: int = 32) -> list[str]:
    """The launch flags for ``quant`` and ``opts`` on ``server`` (context length and sizes are added by the planner).

    Examples:
        >>> engine_flags("vllm", "fp8", EngineOptions(kv_cache_dtype="fp8", image_tokens=1024))
        ['--quantization fp8', '--kv-cache-dtype fp8', '--enable-prefix-caching', '--mm-processor-kwargs \\'{"max_pixels": 1048576}\\'']
        >>> engine_flags("lmdeploy", "awq", EngineOptions(prefix_caching=False, kv_cache_dtype="int8"))
        ['--model-format awq', '--quant-policy 8']
    """
    opts = opts or EngineOptions()
    flags: list[str] = []
    if quant != "none":
        flag = _QUANT_FLAGS[server].get(quant)
        flags.append(flag if flag else f"# {quant}: serve a pre-quantised checkpoint; {server} reads its scheme")
    if opts.kv_cache_dtype != "auto":
        flags.append(_KV_FLAGS[server][opts.kv_cache_dtype])
    if server == "vllm":
        flags.append("--enable-prefix-caching" if opts.prefix_caching else "--no-enable-prefix-caching")
        if opts.image_tokens is not None:
            pixels = opts.image_tokens * px_per_token ** 2
            flags.append(f"--mm-processor-kwargs '{json.dumps({'max_pixels': pixels})}'")
    elif server == "sglang":
        if not opts.prefix_caching:
            flags.append("--disable-radix-cache")
    elif opts.prefix_caching:
        flags.append("--enable-prefix-caching")
    return flags
