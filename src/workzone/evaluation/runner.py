"""Run a pipeline over a labelled manifest and report every metric."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from workzone.errors import InvalidImageError
from workzone.evaluation.metrics import binary_report, percentiles
from workzone.io.sources import ManifestRow
from workzone.types import Decision, Image

__all__ = ["EvalResult", "run_manifest", "build_report"]


@dataclass
class EvalResult:
    rows: list[ManifestRow]
    decisions: list[Decision | None]  # None: the image could not be decoded
    failures: dict[int, str]
    wall_s: float
    batch_latency_ms: list[float]
    sizes: list[tuple[int, int] | None] | None = None  # (width, height) as decoded: evidence boxes are in these pixels


class Decider(Protocol):
    """What evaluation needs of a pipeline (:class:`workzone.Pipeline` is one): its decoder and a
    blocking call that decides decoded images."""

    def decode(self, items: Sequence[Any], sources: Sequence[str | None] | None = None) -> list[Image]: ...

    def run_decoded(self, images: Sequence[Image], *, run_all: bool = False) -> list[Decision]: ...


def run_manifest(pipe: Decider, rows: Sequence[ManifestRow], *, batch_size: int = 8, run_all: bool = False,
                 progress: Callable[[int], None] | None = None) -> EvalResult:
    """Decide every image of ``rows``; an undecodable image is recorded, not fatal."""
    decisions: list[Decision | None] = [None] * len(rows)
    failures: dict[int, str] = {}
    sizes: list[tuple[int, int] | None] = [None] * len(rows)
    lat: list[float] = []
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        idx, images = [], []
        for i in range(start, min(start + batch_size, len(rows))):
            try:
                images.append(pipe.decode([rows[i].path])[0])
                idx.append(i)
                sizes[i] = (images[-1].width, images[-1].height)
            except InvalidImageError as exc:
                failures[i] = str(exc)
        if images:
            tb = time.perf_counter()
            out = pipe.run_decoded(images, run_all=run_all)
            lat.append((time.perf_counter() - tb) * 1000.0)
            for i, d in zip(idx, out):
                decisions[i] = d
        if progress is not None:
            progress(min(batch_size, len(rows) - start))
    return EvalResult(list(rows), decisions, failures, time.perf_counter() - t0, lat, sizes)


def build_report(result: EvalResult, tier_names: Sequence[str], pipeline_name: str = "") -> dict[str, Any]:
    """MCC, accuracy, precision, recall, F1, ROC-AUC, confusion, per source, per tier exits, latency."""
    ok = [i for i, d in enumerate(result.decisions) if d is not None]
    y = [result.rows[i].label for i in ok]
    p = [result.decisions[i].probability for i in ok]  # type: ignore[union-attr]
    report: dict[str, Any] = {"pipeline": pipeline_name, "overall": binary_report(y, p) if ok else None}
    by_source: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_source[result.rows[i].source or "(none)"].append(i)
    report["per_source"] = {
        src: binary_report([result.rows[i].label for i in ids], [result.decisions[i].probability for i in ids])  # type: ignore[union-attr]
        for src, ids in sorted(by_source.items())
    }
    exits = Counter(result.decisions[i].exit_tier for i in ok)  # type: ignore[union-attr]
    n = max(1, len(ok))
    report["tier_exits"] = {name: exits.get(k, 0) / n for k, name in enumerate(tier_names)}
    report["past_tier_1"] = sum(v for k, v in exits.items() if k > 0) / n
    stage_lat: dict[str, list[float]] = defaultdict(list)
    for i in ok:
        for s in result.decisions[i].stages:  # type: ignore[union-attr]
            stage_lat[s.stage].append(s.latency_ms)
    report["latency_ms"] = {
        "per_image_in_batch": percentiles([result.decisions[i].latency_ms for i in ok]),  # type: ignore[union-attr]
        "per_batch": percentiles(result.batch_latency_ms),
        "per_stage_per_image": {k: percentiles(v) for k, v in stage_lat.items()},
    }
    report["cost_per_image"] = float(np.mean([result.decisions[i].cost for i in ok])) if ok else None  # type: ignore[union-attr]
    report["images_per_s"] = len(ok) / result.wall_s if result.wall_s > 0 else None
    report["undecodable"] = {str(result.rows[i].path): msg for i, msg in result.failures.items()}
    report["errors"] = [
        {"path": str(result.rows[i].path), "source": result.rows[i].source, "label": result.rows[i].label,
         "probability": result.decisions[i].probability, "exit_tier": result.decisions[i].exit_tier_name}  # type: ignore[union-attr]
        for i in ok if int(result.decisions[i].label) != result.rows[i].label  # type: ignore[union-attr]
    ]
    return report
