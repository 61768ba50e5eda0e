"""GPU memory plans for pipelines (``workzone plan``); the pre-flight checks are in :mod:`workzone.checking`.

The plan is an estimate from a few numbers, not a measurement: weights are parameter count x bytes
per parameter, VLM/LLM engines add a KV cache of ``2 x layers x kv_heads x head_dim x bytes x
max_model_len x max_num_seqs`` and a fixed overhead, vision models add activations per image in
flight. The tables below hold the numbers (public model cards and configs, rounded); a model id
not in them is reported, never guessed for an engine. Stages are placed on GPUs first-fit
decreasing; an engine that fits no single GPU is split with tensor parallelism.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal
from urllib.parse import urlparse

from workzone.checking import ENGINE_KINDS, KIND_REQUIREMENTS, CheckRow, check_pipeline, missing_modules, nested_stages
from workzone.config.schema import PipelineConfig, StageSpec
from workzone.engine_options import (KV_BYTES, QUANT_BYTES, EngineOptions, check_engine_options, engine_flags,
                                     unsupported)
from workzone.errors import ConfigError

# KIND_REQUIREMENTS, missing_modules, CheckRow and check_pipeline live in workzone.checking; they are
# re-exported here because callers imported them from this module before the split.
__all__ = ["ModelSpec", "MODEL_TABLE", "KIND_REQUIREMENTS", "Quant", "GpuSpec", "parse_gpus", "lookup_model",
           "Item", "Plan", "plan_pipeline", "missing_modules", "launch_commands", "CheckRow", "check_pipeline"]

Quant = Literal["none", "fp8", "int8", "awq", "gptq", "nvfp4"]
GiB = 1024 ** 3


@dataclass(frozen=True)
class ModelSpec:
    """What the planner knows about one model family member.

    Attributes:
        key: normalised substring that identifies it in a model id (``qwen3-vl-8b``).
        params_b: parameters, in billions.
        family: ``vlm`` / ``llm`` are served by an engine (KV cache); ``vision`` runs in-process.
        layers, kv_heads, head_dim: language-model attention shape, for the KV cache.
        act_gb: activation memory per image in flight (vision models; estimate).
        px_per_token: side in pixels of one visual token after merging (VLMs).
        reasoning_parser: vLLM/SGLang reasoning parser name for thinking models.
    """

    key: str
    params_b: float
    family: Literal["vlm", "llm", "vision"]
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    act_gb: float = 0.0
    px_per_token: int = 32
    reasoning_parser: str | None = None


def _vlm(key: str, b: float, layers: int, kv: int, px: int = 32) -> ModelSpec:
    return ModelSpec(key, b, "vlm", layers, kv, 128, px_per_token=px)


def _llm(key: str, b: float, layers: int, kv: int, parser: str | None) -> ModelSpec:
    return ModelSpec(key, b, "llm", layers, kv, 128, reasoning_parser=parser)


def _vis(key: str, b: float, act: float) -> ModelSpec:
    return ModelSpec(key, b, "vision", act_gb=act)


MODEL_TABLE: tuple[ModelSpec, ...] = (
    # Qwen3-VL (Instruct and Thinking share the architecture): text stack of Qwen3, 16 px patches merged 2x2.
    _vlm("qwen3-vl-2b", 2.13, 28, 8), _vlm("qwen3-vl-4b", 4.44, 36, 8), _vlm("qwen3-vl-8b", 8.77, 36, 8),
    _vlm("qwen3-vl-32b", 33.4, 64, 8), _vlm("qwen3-vl-30b-a3b", 31.1, 48, 4),
    # Qwen2.5-VL: 14 px patches merged 2x2.
    _vlm("qwen2-5-vl-3b", 3.75, 36, 2, 28), _vlm("qwen2-5-vl-7b", 8.29, 28, 4, 28),
    _vlm("qwen2-5-vl-32b", 33.5, 64, 8, 28), _vlm("qwen2-5-vl-72b", 73.4, 80, 8, 28),
    # InternVL3.5: 448 px tiles of 256 tokens (28 px per token), Qwen3 language model.
    _vlm("internvl3-5-2b", 2.35, 28, 8, 28), _vlm("internvl3-5-4b", 4.73, 36, 8, 28),
    _vlm("internvl3-5-8b", 8.53, 36, 8, 28), _vlm("internvl3-5-38b", 38.4, 64, 8, 28),
    # Reasoners (text only).
    _llm("deepseek-r1-distill-qwen-1-5b", 1.78, 28, 2, "deepseek_r1"),
    _llm("deepseek-r1-distill-qwen-7b", 7.62, 28, 4, "deepseek_r1"),
    _llm("deepseek-r1-distill-qwen-14b", 14.8, 48, 8, "deepseek_r1"),
    _llm("deepseek-r1-distill-qwen-32b", 32.8, 64, 8, "deepseek_r1"),
    _llm("qwen3-4b", 4.02, 36, 8, "qwen3"), _llm("qwen3-8b", 8.19, 36, 8, "qwen3"),
    _llm("qwen3-14b", 14.8, 40, 8, "qwen3"), _llm("qwen3-32b", 32.8, 64, 8, "qwen3"),
    # Open-vocabulary detectors, depth, segmentation, zero-shot (activations at their default input sizes).
    _vis("owlv2-base", 0.155, 0.35), _vis("owlv2-large", 0.438, 0.9),
    _vis("owlvit-base", 0.153, 0.15), _vis("owlvit-large", 0.434, 0.4),
    _vis("grounding-dino-tiny", 0.172, 0.5), _vis("grounding-dino-base", 0.233, 0.6),
    _vis("depth-anything-v2-small", 0.0248, 0.1), _vis("depth-anything-v2-base", 0.0975, 0.2),
    _vis("depth-anything-v2-large", 0.335, 0.4), _vis("sam3", 0.848, 1.0),
    _vis("siglip-base", 0.203, 0.05), _vis("siglip-large", 0.652, 0.1), _vis("siglip-so400m", 0.878, 0.15),
    _vis("siglip2-base", 0.375, 0.05), _vis("siglip2-large", 0.882, 0.1), _vis("siglip2-so400m", 1.14, 0.15),
    _vis("clip-vit-base-patch32", 0.151, 0.03), _vis("clip-vit-base-patch16", 0.150, 0.05),
    _vis("clip-vit-large-patch14", 0.428, 0.1),
    # Real-time detectors at 640 px.
    *(_vis(f"yolo11{s}", b, a) for s, b, a in (("n", 0.0026, 0.05), ("s", 0.0094, 0.08), ("m", 0.0201, 0.15),
                                                 ("l", 0.0253, 0.2), ("x", 0.0569, 0.3))),
    *(_vis(f"yolo26{s}", b, a) for s, b, a in (("n", 0.0024, 0.05), ("s", 0.0095, 0.08), ("m", 0.0204, 0.15),
                                                 ("l", 0.0248, 0.2), ("x", 0.0557, 0.3))),
    *(_vis(f"rfdetr-{v}", b, a) for v, b, a in (("nano", 0.030, 0.1), ("small", 0.032, 0.15),
                                                  ("medium", 0.034, 0.2), ("base", 0.029, 0.2), ("large", 0.128, 0.3))),
)

GPU_KINDS = ("ultralytics", "rfdetr", "hf_zero_shot_detection", "hf_image_classification", "hf_zero_shot_image",
             "hf_depth", "hf_segmentation", "vlm_transformers")

# About 10 % of a model (embeddings, norms, vision tower) stays in bf16 whatever the scheme
# (bytes per quantised parameter: workzone.engine_options.QUANT_BYTES).
_UNQUANTISED_SHARE = 0.1


def _normalise(model_id: str) -> str:
    return re.sub(r"[._\s]+", "-", model_id.lower())


def lookup_model(model_id: str) -> ModelSpec | None:
    """The table entry whose key occurs in ``model_id`` (longest key wins), or ``None``.

    Examples:
        >>> lookup_model("Qwen/Qwen3-VL-8B-Instruct-FP8").params_b
        8.77
        >>> lookup_model("OpenGVLab/InternVL3_5-8B").key
        'internvl3-5-8b'
        >>> lookup_model("my-own-model") is None
        True
    """
    norm = _normalise(model_id)
    hits = [m for m in MODEL_TABLE if m.key in norm]
    return max(hits, key=lambda m: len(m.key)) if hits else None


@dataclass(frozen=True)
class GpuSpec:
    count: int
    memory_gb: float


def parse_gpus(text: str) -> GpuSpec:
    """``"2x80GB"`` / ``"80GB"`` / ``"4x141G"`` -> :class:`GpuSpec` (GB are GiB here).

    Examples:
        >>> parse_gpus("2x80GB")
        GpuSpec(count=2, memory_gb=80.0)
    """
    m = re.fullmatch(r"\s*(?:(\d+)\s*[xX*]\s*)?(\d+(?:\.\d+)?)\s*(?:GB|GiB|G)?\s*", text)
    if not m or int(m.group(1) or 1) < 1 or float(m.group(2)) <= 0:
        raise ConfigError(f"--gpus: expected COUNTxMEMORY like 2x80GB, got {text!r}")
    return GpuSpec(int(m.group(1) or 1), float(m.group(2)))


@dataclass
class Item:
    """One thing that needs GPU memory: an engine (one or more remote stages) or an in-process stage."""

    name: str
    stages: list[str]
    kind: str
    model: str
    spec: ModelSpec | None
    weights_gb: float
    act_gb: float
    kv_gb: float
    overhead_gb: float
    engine: bool = False
    port: int | None = None
    max_model_len: int = 0
    max_num_seqs: int = 0
    image_limit: int = 0
    tp: int = 1
    gpus: list[int] = field(default_factory=list)
    pinned: int | None = None
    note: str = ""
    quant: str = "none"
    options: EngineOptions | None = None

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.act_gb + self.kv_gb + self.overhead_gb

    @property
    def per_gpu_gb(self) -> float:
        return (self.weights_gb + self.kv_gb + self.act_gb) / self.tp + self.overhead_gb


@dataclass
class Plan:
    gpus: GpuSpec
    quant: str
    reserve_gb: float
    items: list[Item]
    used: list[float]
    cpu_stages: list[str]
    warnings: list[str]

    def utilisation(self, item: Item) -> float:
        """``--gpu-memory-utilization`` for an engine: its share of one GPU, rounded up, plus 2 %."""
        return _utilisation(item.per_gpu_gb, self.gpus.memory_gb)

    def cache_fraction(self, item: Item) -> float:
        """LMDeploy's ``--cache-max-entry-count``: KV cache as a share of the memory free after weights.

        LMDeploy measures "free" when it starts, so this assumes the GPU's other planned processes
        are already running.
        """
        others = max((self.used[g] - _footprint(item, self.gpus.memory_gb) for g in item.gpus), default=0.0)
        free = self.gpus.memory_gb - self.reserve_gb - others - item.weights_gb / item.tp
        return min(0.95, max(0.05, math.ceil(item.kv_gb / item.tp * 1.1 / max(free, 1e-6) * 100) / 100))


def plan_pipeline(config: PipelineConfig, gpus: GpuSpec, quant: Quant = "none", reserve_gb: float = 1.0) -> Plan:
    """Estimate every GPU stage's memory and place them on ``gpus``.

    Raises:
        ConfigError: an engine's model is not in :data:`MODEL_TABLE`, or the stages do not fit;
            the message gives the numbers.
    """
    items, cpu, warnings = _collect_items(config, quant)
    for item in items:
        for server in ("vllm", "sglang", "lmdeploy"):
            why = item.engine and item.options is None and unsupported(server, item.quant, None)
            if why:
                warnings.append(f"{item.name}: {why} (no {server} command)")
    for item in items:
        if item.pinned is not None and item.pinned >= gpus.count:
            raise ConfigError(f"plan refused: stage {item.name!r} is pinned to cuda:{item.pinned} "
                              f"but the plan has {gpus.count} GPU(s)")
    capacity = gpus.memory_gb - reserve_gb
    used = [0.0] * gpus.count
    # Pinned stages first (they have one choice), then first-fit decreasing.
    for item in sorted(items, key=lambda i: (i.pinned is None, -i.total_gb)):
        _place(item, used, capacity, gpus, reserve_gb)
    return Plan(gpus, quant, reserve_gb, items, used, cpu, warnings)


_MAX_SHARE = 0.95  # the most of a GPU an engine is ever asked to take


def _utilisation(per_gpu_gb: float, memory_gb: float) -> float:
    return min(_MAX_SHARE, math.ceil(per_gpu_gb / memory_gb * 100 + 2) / 100)


def _footprint(item: Item, memory_gb: float) -> float:
    """GB one GPU gives to ``item``: an engine takes its whole ``--gpu-memory-utilization`` share."""
    if not item.engine:
        return item.per_gpu_gb
    share = math.ceil(item.per_gpu_gb / memory_gb * 100 + 2) / 100
    # Past the largest share an engine is asked to take, it does not fit this GPU at all.
    return share * memory_gb if share <= _MAX_SHARE else math.inf


def _collect_items(config: PipelineConfig, quant: str) -> tuple[list[Item], list[str], list[str]]:
    engines: dict[tuple[str, str], Item] = {}
    items: list[Item] = []
    cpu: list[str] = []
    warnings: list[str] = []
    for tier in config.tiers:
        for st in tier.stages:
            if not st.enabled:
                continue
            if st.kind in ENGINE_KINDS:
                _add_to_engine(engines, st, quant)
            elif st.kind in GPU_KINDS or (st.device or "").startswith("cuda"):
                parts = [_in_process_item(s) for s in [st, *nested_stages(st)]]
                for part in parts:
                    if part.spec is None:
                        warnings.append(f"stage {part.name!r}: model {part.model!r} is not in the planner's table; "
                                        f"assumed {part.total_gb:.1f} GB")
                item = _merge(parts)
                m = re.fullmatch(r"cuda:(\d+)", st.device or "")
                item.pinned = int(m.group(1)) if m else None
                items.append(item)
            else:
                cpu.append(st.name)
    return list(engines.values()) + items, cpu, warnings


def _merge(parts: list[Item]) -> Item:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Item(first.name, [first.name], first.kind, " + ".join(p.model for p in parts), first.spec,
                sum(p.weights_gb for p in parts), sum(p.act_gb for p in parts), sum(p.kv_gb for p in parts),
                max(p.overhead_gb for p in parts), note="with its detector")


def _stage_model(st: StageSpec) -> str:
    p = st.params
    if st.kind == "rfdetr":
        return f"rfdetr-{getattr(p, 'variant', 'base')}"
    return str(getattr(p, "model", "") or st.kind)


def _add_to_engine(engines: dict[tuple[str, str], Item], st: StageSpec, quant: str) -> None:
    p = st.params
    model, url = str(getattr(p, "model")), str(getattr(p, "base_url"))
    spec = lookup_model(model)
    if spec is None or spec.family == "vision":
        known = ", ".join(m.key for m in MODEL_TABLE if m.family != "vision")
        raise ConfigError(f"stage {st.name!r}: cannot size the engine for model {model!r}; the planner knows: {known}")
    opts = st.engine or EngineOptions()
    q = opts.quantization or quant
    if st.engine is not None:  # a plan-wide --quant an engine lacks only drops that engine's command (a warning)
        check_engine_options(st.name, opts, q)
    if st.kind == "vlm_openai":
        image_tokens = math.ceil(getattr(p, "max_pixels") / spec.px_per_token ** 2) + 8
        if opts.image_tokens is not None and image_tokens - 8 > opts.image_tokens:
            raise ConfigError(f"stage {st.name!r}: max_pixels {getattr(p, 'max_pixels')} is {image_tokens - 8} visual "
                              f"tokens per image, above its engine's image_tokens {opts.image_tokens}; lower max_pixels "
                              f"to {opts.image_tokens * spec.px_per_token ** 2} or raise image_tokens")
        need_len = image_tokens + 512 + getattr(p, "max_tokens")
    else:  # the reasoner's prompt is the evidence digest, then it thinks
        need_len = 2048 + getattr(p, "max_tokens")
    need_len = max(2048, 1024 * math.ceil(need_len / 1024))
    if opts.max_model_len is not None:
        if opts.max_model_len < need_len:
            raise ConfigError(f"stage {st.name!r}: engine max_model_len {opts.max_model_len} is below the {need_len} "
                              "tokens one request can take (image tokens + prompt + max_tokens)")
        need_len = opts.max_model_len
    key = (url.rstrip("/"), model)
    item = engines.get(key)
    if item is None:
        port = urlparse(url).port or (443 if url.startswith("https") else 80)
        qb = QUANT_BYTES[q] * (1 - _UNQUANTISED_SHARE) + 2.0 * _UNQUANTISED_SHARE
        item = Item(name=f"engine:{model}", stages=[], kind=st.kind, model=model, spec=spec,
                    weights_gb=spec.params_b * 1e9 * qb / GiB, act_gb=0.0, kv_gb=0.0,
                    overhead_gb=2.0 if spec.family == "vlm" else 1.5, engine=True, port=port, quant=q, options=st.engine)
        engines[key] = item
    elif (item.quant, item.options) != (q, st.engine):
        raise ConfigError(f"stage {st.name!r}: shares the engine {model} at {url} with stage {item.stages[0]!r} but "
                          "asks for other engine options; give both stages the same engine: block")
    item.stages.append(st.name)
    item.max_model_len = max(item.max_model_len, need_len)
    item.max_num_seqs += int(getattr(p, "max_concurrency"))
    item.image_limit = max(item.image_limit, 1 if st.kind == "vlm_openai" else 0)
    kv_bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * KV_BYTES[opts.kv_cache_dtype]  # K and V
    item.kv_gb = kv_bytes_per_token * item.max_model_len * item.max_num_seqs / GiB


def _in_process_item(st: StageSpec) -> Item:
    p = st.params
    model = _stage_model(st)
    spec = lookup_model(model)
    batch = int(getattr(p, "batch_size", 1) or 1)
    dtype = str(getattr(p, "dtype", "auto"))
    if st.kind == "ultralytics":
        nbytes = 2.0 if getattr(p, "half", False) else 4.0
    elif st.kind == "rfdetr":
        nbytes = 4.0
    else:  # transformers stages: auto = half precision on CUDA
        nbytes = 4.0 if dtype == "float32" else 2.0
    if spec is None:
        return Item(st.name, [st.name], st.kind, model, None, 0.5, 0.5 * batch, 0.0, 0.3, note="unknown model: estimate")
    act = spec.act_gb * batch
    kv = 0.0
    if spec.family == "vlm":  # one forward over the image tokens and the question, no cache kept
        tokens = math.ceil(getattr(p, "max_pixels", 448 * 448) / spec.px_per_token ** 2) + 512
        kv = 2 * spec.layers * spec.kv_heads * spec.head_dim * nbytes * tokens * batch / GiB
        act = 0.5 * batch
    return Item(st.name, [st.name], st.kind, model, spec, spec.params_b * 1e9 * nbytes / GiB, act, kv, 0.3)


def _place(item: Item, used: list[float], capacity: float, gpus: GpuSpec, reserve_gb: float) -> None:
    mem = gpus.memory_gb
    candidates = range(len(used)) if item.pinned is None else [item.pinned]
    need = _footprint(item, mem)
    for g in candidates:
        if used[g] + need <= capacity:
            used[g] += need
            item.gpus = [g]
            return
    if item.engine:
        tp = 2
        while tp <= gpus.count:
            item.tp = tp
            need_tp = _footprint(item, mem)
            emptiest = sorted(range(len(used)), key=lambda g: used[g])
            free = [g for g in emptiest if used[g] + need_tp <= capacity][:tp]
            if len(free) == tp:
                for g in free:
                    used[g] += need_tp
                item.gpus = sorted(free)
                return
            tp *= 2
        item.tp = 1
    free_now = ", ".join(f"GPU{g}: {capacity - used[g]:.1f}" for g in range(len(used)))
    where = "" if item.pinned is None else f" on its pinned cuda:{item.pinned}"
    tp_note = ""
    max_tp = min(8, 2 ** int(math.log2(gpus.count)))
    if item.engine and max_tp > 1:
        per = (item.weights_gb + item.kv_gb) / max_tp + item.overhead_gb
        tp_note = f"; even split over {max_tp} GPUs (tensor parallel) it needs {per:.1f} GB on each"
    raise ConfigError(
        f"plan refused: {item.name} (stages {', '.join(item.stages)}) needs {item.total_gb:.1f} GB{where} "
        f"(weights {item.weights_gb:.1f} + activations {item.act_gb:.1f} + KV cache {item.kv_gb:.1f} + overhead "
        f"{item.overhead_gb:.1f}){tp_note}; free per GPU after {reserve_gb:.1f} GB reserve: {free_now}. "
        "Use more or larger GPUs, --quant, or lower max_concurrency / max_pixels / batch_size")


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
