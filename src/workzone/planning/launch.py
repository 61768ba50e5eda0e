"""Launch commands for the engines of a plan: vLLM, SGLang and LMDeploy (``workzone plan``)."""

from __future__ import annotations

from typing import Any, Iterable

from workzone.engine_options import engine_flags, unsupported
from workzone.errors import ConfigError
from workzone.planning.placement import Item, Plan

__all__ = ["launch_commands", "describe_item"]


def launch_commands(plan: Plan, servers: Iterable[str] = ("vllm", "sglang", "lmdeploy")) -> list[tuple[str, str, str]]:
    """``(engine name, server, shell command)`` for every engine in the plan."""
    out: list[tuple[str, str, str]] = []
    for item in plan.items:
        if not item.engine:
            continue
        devices = ",".join(str(g) for g in item.gpus)
        for server in servers:
            share = plan.cache_fraction(item) if server == "lmdeploy" else plan.utilisation(item)
            if item.options is not None and server not in item.options.servers:
                continue  # the stage's engine: block rules this server out
            if unsupported(server, item.quant, item.options) is not None:
                continue  # the plan-wide --quant this server cannot serve (listed by plan.warnings)
            out.append((item.name, server, _command(server, item, devices, share)))
    return out


def _command(server: str, item: Item, devices: str, util: float) -> str:
    spec = item.spec
    flags = engine_flags(server, item.quant, item.options, px_per_token=spec.px_per_token if spec else 32)
    parser = spec.reasoning_parser if spec is not None else None
    if parser is None and "thinking" in item.model.lower():
        parser = "qwen3"  # Qwen3-VL-*-Thinking: split <think> from the answer
    env = f"CUDA_VISIBLE_DEVICES={devices} "
    if server == "vllm":
        parts = [f"vllm serve {item.model}", f"--port {item.port}", f"--max-model-len {item.max_model_len}",
                 f"--max-num-seqs {item.max_num_seqs}", f"--gpu-memory-utilization {util:.2f}"]
        if item.image_limit:
            parts.append(f"--limit-mm-per-prompt '{{\"image\": {item.image_limit}, \"video\": 0}}'")
        if item.tp > 1:
            parts.append(f"--tensor-parallel-size {item.tp}")
        parts += flags
        if parser:
            parts.append(f"--reasoning-parser {parser}")
        return env + " \\\n    ".join(parts)
    if server == "sglang":
        parts = [f"python -m sglang.launch_server --model-path {item.model}", f"--port {item.port}",
                 f"--context-length {item.max_model_len}", f"--max-running-requests {item.max_num_seqs}",
                 f"--mem-fraction-static {util:.2f}", f"--tp-size {item.tp}", *flags]
        if parser:
            parts.append(f"--reasoning-parser {parser.replace('_', '-')}")
        return env + " \\\n    ".join(parts)  # radix (prefix) cache is on by default
    if server == "lmdeploy":
        parts = [f"lmdeploy serve api_server {item.model}", f"--server-port {item.port}",
                 f"--session-len {item.max_model_len}", f"--max-batch-size {item.max_num_seqs}",
                 f"--cache-max-entry-count {util:.2f}", f"--tp {item.tp}", *flags]
        if parser:
            parts.append(f"--reasoning-parser {parser.replace('_', '-')}")
        return env + " \\\n    ".join(parts)
    raise ConfigError(f"unknown server {server!r}; expected vllm, sglang or lmdeploy")


def describe_item(item: Item) -> dict[str, Any]:
    """JSON-ready row for ``workzone plan --json``."""
    return {"name": item.name, "stages": item.stages, "kind": item.kind, "model": item.model,
            "params_b": None if item.spec is None else item.spec.params_b, "weights_gb": round(item.weights_gb, 2),
            "activations_gb": round(item.act_gb, 2), "kv_cache_gb": round(item.kv_gb, 2),
            "overhead_gb": item.overhead_gb, "total_gb": round(item.total_gb, 2), "gpus": item.gpus, "tp": item.tp,
            "max_model_len": item.max_model_len or None, "max_num_seqs": item.max_num_seqs or None,
            "quant": item.quant if item.engine else None,
            "engine_options": None if item.options is None else item.options.model_dump(mode="json")}
