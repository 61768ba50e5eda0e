"""Where every GPU stage goes: memory estimates per stage and engine, placed on GPUs (``workzone plan``).

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
from typing import Literal
from urllib.parse import urlparse

from workzone.config.schema import PipelineConfig, StageSpec
from workzone.engine_options import KV_BYTES, QUANT_BYTES, EngineOptions, check_engine_options, unsupported
from workzone.errors import ConfigError
from workzone.planning.models import MODEL_TABLE, GiB, ModelSpec, lookup_model
from workzone.stages.registry import get_stage_class

__all__ = ["Quant", "GpuSpec", "parse_gpus", "Item", "Plan", "plan_pipeline"]

Quant = Literal["none", "fp8", "int8", "awq", "gptq", "nvfp4"]

# About 10 % of a model (embeddings, norms, vision tower) stays in bf16 whatever the scheme
# (bytes per quantised parameter: workzone.engine_options.QUANT_BYTES).
_UNQUANTISED_SHARE = 0.1


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
            _refuse_if_too_small(items, gpus, reserve_gb)  # the memory it lacks says more than the pin
            raise ConfigError(f"plan refused: stage {item.name!r} is pinned to cuda:{item.pinned} "
                              f"but the plan has {gpus.count} GPU(s)")
    capacity = gpus.memory_gb - reserve_gb
    used = [0.0] * gpus.count
    # Pinned stages first (they have one choice), then first-fit decreasing.
    for item in sorted(items, key=lambda i: (i.pinned is None, -i.total_gb)):
        _place(item, used, capacity, gpus, reserve_gb)
    return Plan(gpus, quant, reserve_gb, items, used, cpu, warnings)


_MAX_SHARE = 0.95  # the most of a GPU an engine is ever asked to take


def _refuse_if_too_small(items: list[Item], gpus: GpuSpec, reserve_gb: float) -> None:
    """Refuse with the numbers when the stages need more memory than every GPU together has.

    Checked before a ``device: cuda:N`` pin beyond the GPUs is refused, so a plan on too few GPUs
    names the memory it lacks, not a pin it cannot honour.
    """
    capacity = gpus.count * (gpus.memory_gb - reserve_gb)
    need = sum(i.total_gb for i in items)
    if need <= capacity:
        return
    largest = ", ".join(f"{i.name} {i.total_gb:.1f} GB" for i in sorted(items, key=lambda i: -i.total_gb)[:3])
    raise ConfigError(
        f"plan refused: the GPU stages need {need:.1f} GB in all, but {gpus.count} x {gpus.memory_gb:g} GB gives "
        f"{capacity:.1f} GB after {reserve_gb:g} GB reserve each ({need - capacity:.1f} GB short; largest: {largest}). "
        f"Use more or larger GPUs (at least {math.ceil(need / (gpus.memory_gb - reserve_gb))} x {gpus.memory_gb:g} GB), "
        "--quant, or lower max_concurrency / max_pixels / batch_size")


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
            runs_on = get_stage_class(st.kind).runs_on
            if runs_on == "engine":
                _add_to_engine(engines, st, quant, warnings)
            elif runs_on == "gpu" or (st.device or "").startswith("cuda"):
                parts = [_in_process_item(s) for s in [st, *st.nested()]]
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


def _add_to_engine(engines: dict[tuple[str, str], Item], st: StageSpec, quant: str, notes: list[str]) -> None:
    p = st.params
    model, url = str(getattr(p, "model")), str(getattr(p, "base_url"))
    spec = lookup_model(model)
    if spec is None or spec.family == "vision":
        known = ", ".join(m.key for m in MODEL_TABLE if m.family != "vision")
        raise ConfigError(f"stage {st.name!r}: cannot size the engine for model {model!r}; the planner knows: {known}")
    opts = st.engine or EngineOptions()
    q = opts.quantization or quant
    if opts.quantization and quant != "none" and opts.quantization != quant:
        notes.append(f"stage {st.name!r}: its engine: block sets quantization {opts.quantization}, which overrides "
                     f"--quant {quant} for that engine")
    if st.engine is not None:  # a plan-wide --quant an engine lacks only drops that engine's command (a warning)
        check_engine_options(st.name, opts, q)
    cls = get_stage_class(st.kind)
    if cls.images_per_prompt:  # type: ignore[attr-defined]
        image_tokens = math.ceil(getattr(p, "max_pixels") / spec.px_per_token ** 2) + 8
        if opts.image_tokens is not None and image_tokens - 8 > opts.image_tokens:
            raise ConfigError(f"stage {st.name!r}: max_pixels {getattr(p, 'max_pixels')} is {image_tokens - 8} visual "
                              f"tokens per image, above its engine's image_tokens {opts.image_tokens}; lower max_pixels "
                              f"to {opts.image_tokens * spec.px_per_token ** 2} or raise image_tokens")
    need_len = cls.context_tokens(p, spec.px_per_token)  # type: ignore[attr-defined]
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
    item.image_limit = max(item.image_limit, cls.images_per_prompt)  # type: ignore[attr-defined]
    kv_bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * KV_BYTES[opts.kv_cache_dtype]  # K and V
    item.kv_gb = kv_bytes_per_token * item.max_model_len * item.max_num_seqs / GiB


def _in_process_item(st: StageSpec) -> Item:
    p = st.params
    cls = get_stage_class(st.kind)
    model = cls.planned_model(p)
    spec = lookup_model(model)
    batch = int(getattr(p, "batch_size", 1) or 1)
    nbytes = cls.bytes_per_param(p)
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
