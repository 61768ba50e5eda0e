"""The confidence-routed cascade: tiers in order, early exit, failure isolation, deadlines.

Each tier runs its stages concurrently on the images still undecided. After the tier, every
stage score gathered so far is fused into P(road work) with that tier's fitted fusion; an image
whose probability crosses the tier's exit thresholds leaves, the rest move on together. A stage
that raises or times out is recorded in the decision and skipped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from workzone.config.schema import PipelineConfig, TierConfig
from workzone.errors import DeadlineExceeded, StageError, WorkzoneError
from workzone.fusion.pooling import pool_log_odds
from workzone.fusion.rules import leaves_tier, prior_probability
from workzone.routing import plan_routes
from workzone.stages.base import Stage, StageContext
from workzone.stages.registry import get_stage_class
from workzone.types import Decision, Evidence, Image, StageOutput, StageReport, sigmoid

__all__ = ["Cascade", "TierEvent", "build_stages"]


@dataclass(frozen=True)
class TierEvent:
    """Progress of one image after one tier (the server streams these as SSE)."""

    index: int
    tier: int
    tier_name: str
    probability: float
    stages: tuple[str, ...]
    cost: float
    decided: bool
    reason: str | None = None
    route: str | None = None


EventCallback = Callable[[TierEvent], Awaitable[None] | None]


def build_stages(config: PipelineConfig, context: StageContext) -> list[list[Stage]]:
    """Instantiate every enabled stage of ``config`` (cheap: nothing is loaded yet)."""
    tiers: list[list[Stage]] = []
    for tier in config.tiers:
        stages = []
        for spec in tier.stages:
            if not spec.enabled:
                continue
            cls = get_stage_class(spec.kind)
            ctx = context if spec.device is None else StageContext(context.base_dir, spec.device, context.extras)
            stages.append(cls(spec.name, spec.params, ctx, cost=spec.cost))
        tiers.append(stages)
    return tiers


class Cascade:
    """Runs a pipeline over batches of decoded images.

    Build with :meth:`from_config`, then ``await start()`` once, ``await run(images)`` many times,
    and ``await aclose()`` at the end (or use ``async with``).
    """

    def __init__(self, config: PipelineConfig, stages: list[list[Stage]]) -> None:
        if len(stages) != len(config.tiers):
            raise ValueError(f"expected {len(config.tiers)} tiers of stages, got {len(stages)}")
        self.config = config
        self.tiers: list[tuple[TierConfig, list[Stage]]] = list(zip(config.tiers, stages))
        self._timeouts = {s.name: s.timeout_s for t in config.tiers for s in t.stages}
        self._started = False

    @classmethod
    def from_config(cls, config: PipelineConfig, base_dir: str | Path = ".", device: str = "cpu",
                    extras: dict[str, Any] | None = None) -> "Cascade":
        ctx = StageContext(base_dir=Path(base_dir), device=device, extras=dict(extras or {}))
        return cls(config, build_stages(config, ctx))

    @property
    def stages(self) -> list[Stage]:
        return [s for _, tier in self.tiers for s in tier]

    @property
    def ready(self) -> bool:
        return self._started

    @property
    def cold_runs(self) -> int:
        """The stages' runs that met a shape for the first time (see :attr:`Stage.cold_runs`)."""
        return sum(s.cold_runs for s in self.stages)

    async def start(self, largest_batch: int | None = None) -> None:
        """Load and warm up every stage, concurrently. A stage that fails to load raises.

        Args:
            largest_batch: the most images a batch will hold (a server's batch size): each stage also
                runs what makes every batch up to it meet no shape for the first time (see
                :meth:`Stage.warm_batches`), so that no served batch waits for a compile.
        """
        if self._started:
            return

        async def _one(stage: Stage) -> None:
            try:
                await stage.load()
                await stage.warmup()
                if largest_batch:
                    await stage.warm_batches(largest_batch)
            except WorkzoneError:
                raise
            except Exception as exc:  # noqa: BLE001 - wrap third-party errors with the stage name
                raise StageError(stage.name, f"failed to load: {type(exc).__name__}: {exc}") from exc

        await asyncio.gather(*(_one(s) for s in self.stages))
        self._started = True

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.stages), return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> "Cascade":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, images: Sequence[Image], *, deadline_s: float | None = None,
                  on_event: EventCallback | None = None, run_all: bool = False) -> list[Decision]:
        """Decide every image.

        Args:
            images: decoded images.
            deadline_s: wall-clock budget for the whole batch; when it runs out, undecided images are
                decided from the tiers that finished (reason ``deadline``). Defaults to the pipeline's.
            on_event: called after each tier for each image still in play.
            run_all: run every tier on every image (no early exit); ``workzone tune`` uses this to
                collect all stage scores.

        Returns:
            One decision per image, in order.
        """
        if not self._started:
            await self.start()
        t0 = time.perf_counter()
        deadline_s = self.config.deadline_s if deadline_s is None else deadline_s
        end = None if deadline_s is None else t0 + deadline_s
        n = len(images)
        scores: list[dict[str, float | None]] = [{} for _ in range(n)]
        reports: list[list[StageReport]] = [[] for _ in range(n)]
        probs: list[list[float]] = [[] for _ in range(n)]
        cost = [0.0] * n
        routes: list[list[str]] = [[] for _ in range(n)]
        done: dict[int, Decision] = {}
        pending = list(range(n))
        last = len(self.tiers) - 1
        for ti, (tier, stages) in enumerate(self.tiers):
            if not pending:
                break
            remaining = None if end is None else end - time.perf_counter()
            if remaining is not None and remaining <= 0:
                break
            if stages:
                z_now = [pool_log_odds(scores[i], self.tiers[ti - 1][0].fusion) if ti else 0.0 for i in pending]
                runs, notes = plan_routes(tier.route if ti else None, tier.name, [s.name for s in stages], pending,
                                          z_now, [reports[i] for i in pending])
                for i, note in notes.items():
                    routes[i].append(note)
                jobs = [(s, runs[s.name]) for s in stages if runs[s.name]]
                results = await asyncio.gather(*(
                    self._run_stage(s, ti, [images[i] for i in idx], remaining, [tuple(reports[i]) for i in idx])
                    for s, idx in jobs))
                for (stage, idx), per_image in zip(jobs, results):
                    for i, rep in zip(idx, per_image):
                        reports[i].append(rep)
                        scores[i][stage.name] = rep.log_odds
                        cost[i] += stage.cost
            still: list[int] = []
            for i in pending:
                p = sigmoid(pool_log_odds(scores[i], tier.fusion))
                probs[i].append(p)
                reason = self._exit_reason(tier, p, ti == last, run_all)
                if reason is not None:
                    done[i] = self._decide(images[i], i, ti, reason, probs, reports, cost, t0, routes)
                else:
                    still.append(i)
                if on_event is not None:
                    route = routes[i][-1] if routes[i] and routes[i][-1].startswith(f"{tier.name}: ") else None
                    ev = TierEvent(i, ti, tier.name, p, tuple(r.stage for r in reports[i]), cost[i],
                                   reason is not None, reason, route)
                    res = on_event(ev)
                    if asyncio.iscoroutine(res):
                        await res
            pending = still
        for i in pending:  # only reached when the deadline cut the run short
            done[i] = self._decide(images[i], i, len(probs[i]) - 1, "deadline", probs, reports, cost, t0, routes)
            if on_event is not None:
                ev = TierEvent(i, max(0, len(probs[i]) - 1), self._tier_name(len(probs[i]) - 1),
                               done[i].probability, tuple(r.stage for r in reports[i]), cost[i], True, "deadline")
                res = on_event(ev)
                if asyncio.iscoroutine(res):
                    await res
        return [done[i] for i in range(n)]

    def _tier_name(self, ti: int) -> str:
        return self.tiers[ti][0].name if ti >= 0 else "none"

    @staticmethod
    def _exit_reason(tier: TierConfig, p: float, is_last: bool, run_all: bool) -> str | None:
        if is_last:
            return "last tier"
        if run_all:
            return None
        return "confident" if leaves_tier(p, tier.exit) else None

    def _decide(self, image: Image, i: int, ti: int, reason: str, probs: list[list[float]],
                reports: list[list[StageReport]], cost: list[float], t0: float,
                routes: list[list[str]]) -> Decision:
        if probs[i]:
            p = probs[i][-1]
        else:  # deadline before any tier finished: the first tier's prior
            p = self.prior_probability()
        degraded = _degraded_reason(reports[i], reason, self._tier_name(ti), bool(probs[i]))
        return Decision(
            probability=float(p),
            exit_tier=max(ti, 0),
            exit_tier_name=self._tier_name(ti),
            stages=tuple(reports[i]),
            tier_probabilities=tuple(probs[i]),
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            cost=cost[i],
            source=image.source,
            reason=reason,
            routes=tuple(routes[i]),
            degraded=degraded is not None,
            degraded_reason=degraded,
        )

    def prior_probability(self) -> float:
        """P(road work) with no evidence at all: the first tier's fusion bias."""
        return prior_probability(self.tiers[0][0].fusion)

    def prior_decision(self, source: str, why: str) -> Decision:
        """A decision from the prior alone, marked degraded with ``why`` (no stage ran)."""
        return Decision(probability=self.prior_probability(), exit_tier=0, exit_tier_name="none", stages=(),
                        tier_probabilities=(), latency_ms=0.0, cost=0.0, source=source, reason="deadline",
                        degraded=True, degraded_reason=why)

    async def _run_stage(self, stage: Stage, ti: int, batch: list[Image], remaining: float | None,
                         evidence: list[tuple[StageReport, ...]]) -> list[StageReport]:
        timeout = self._timeouts.get(stage.name)
        if remaining is not None:
            timeout = remaining if timeout is None else min(timeout, remaining)
        t = time.perf_counter()
        error: str | None = None
        error_type: str | None = None
        outputs: list[StageOutput] | None = None
        try:
            call = stage.predict(batch, evidence=evidence)
            outputs = await asyncio.wait_for(call, timeout=timeout)
            if len(outputs) != len(batch):
                raise StageError(stage.name, f"returned {len(outputs)} results for {len(batch)} images")
        except asyncio.TimeoutError:
            error = str(DeadlineExceeded(stage.name, f"no answer within {timeout:.3f} s"))
            error_type = DeadlineExceeded.__name__
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolation is the point: any stage failure is recorded
            error = f"{type(exc).__name__}: {exc}"
            error_type = type(exc).__name__
        ms = (time.perf_counter() - t) * 1000.0
        per = ms / max(1, len(batch))
        if outputs is None:
            return [StageReport(stage.name, stage.kind, ti, None, Evidence(), per, error, error_type) for _ in batch]
        # A per-image failure (error_type) is reported like a stage failure, so the decision is degraded.
        return [StageReport(stage.name, stage.kind, ti, o.log_odds, o.evidence, per, o.error_type, o.error_type)
                for o in outputs]


def _degraded_reason(reports: Sequence[StageReport], reason: str, tier_name: str, any_tier: bool) -> str | None:
    """Why a decision is less informed than the pipeline intends, or None (stage names and error types only)."""
    if not reports or not any_tier:
        return "no stage ran before the deadline: the probability is the pipeline's prior"
    failed = [f"{r.stage} ({r.error_type or 'error'})" for r in reports if r.error is not None]
    if len(failed) == len(reports):
        return f"every stage failed: {', '.join(failed)}; the probability is the pipeline's prior"
    parts = []
    if failed:
        parts.append(f"skipped failed stage(s) {', '.join(failed)}")
    if reason == "deadline":
        parts.append(f"the deadline stopped the cascade after tier '{tier_name}'")
    return "; ".join(parts) or None
