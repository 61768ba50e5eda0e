"""Parity of two ways of running a pipeline on real images (test and benchmark alike).

:func:`object_parity`: the torch object path against onnxruntime. Both run the same pipeline
(``default-gpu``: the object decision alone) on the same JPEG bytes: the reference with onnxruntime on the
CPU and Pillow decoding, the other with the torch backend on ``device``, decoding with nvJPEG on CUDA.
:func:`cpu_scheme_parity`: the shipped CPU run scheme (runs spread over threads by image) against the one
before it (runs of several images over every intra-op thread). The probabilities are compared image by image.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from workzone.config.schema import PipelineConfig

__all__ = ["ParityReport", "dev_jpegs", "object_parity", "pipeline_probabilities", "compare", "cpu_scheme_parity",
           "OPERATOR_SCHEME"]


@dataclass(frozen=True)
class ParityReport:
    """How far the torch path's probabilities are from onnxruntime's.

    Attributes:
        n: images compared.
        within: share of images whose probabilities differ by at most ``tolerance``.
        max_abs: the largest difference.
        flips: images labelled differently (p > 0.5 on one side only).
        flips_outside: of those, images where neither probability is within ``tolerance`` of 0.5.
        tolerance: the bound used.
        device: where the torch path ran.
    """

    n: int
    within: float
    max_abs: float
    flips: int
    flips_outside: int
    tolerance: float
    device: str

    def describe(self) -> str:
        return (f"{self.n} images: {self.within:.1%} within {self.tolerance} (max |dp| {self.max_abs:.4f}); "
                f"{self.flips} decisions differ, {self.flips_outside} of them away from the threshold")


def dev_jpegs(data: str | Path, split: str = "dev", limit: int | None = None) -> list[tuple[str, bytes]]:
    """``(path, bytes)`` of a manifest's ``split`` images (``limit`` of them, spread over image sizes)."""
    root = Path(data)
    with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split", split) == split]
    if limit is not None and limit < len(rows):
        # Every distinct size first (the torch path groups by size), then the rest in order.
        seen: set[tuple[str, str]] = set()
        first = [r for r in rows if (r.get("width"), r.get("height")) not in seen
                 and not seen.add((r.get("width"), r.get("height")))]  # type: ignore[func-returns-value]
        rest = [r for r in rows if r not in first]
        rows = (first + rest)[:limit]
    return [(r["path"], (root / r["path"]).read_bytes()) for r in rows]


def object_parity(items: Sequence[tuple[str, bytes]], *, device: str = "cpu", pipeline: str = "default-gpu",
                  tolerance: float = 0.02, batch: int = 64, cpu_share: float = 0.0
                  ) -> tuple[ParityReport, np.ndarray, np.ndarray]:
    """Run ``pipeline`` both ways on ``items`` and compare.

    On CUDA, ``cpu_share`` of the JPEGs are decoded by libjpeg on CPU threads (the pixels the
    reference sees) and the rest by nvJPEG, whose IDCT and chroma upsampling differ slightly; the
    detector's decision is sensitive to such differences (measured: ``benchmarks/results``).

    Returns:
        The report, the onnxruntime probabilities and the torch path's, in ``items``' order.
    """
    from workzone.config.backend import with_backend
    from workzone.config.loader import load_pipeline_config

    cfg, path = load_pipeline_config(pipeline)
    p_ref = pipeline_probabilities(with_backend(cfg, "onnxruntime"), path.parent, items, batch=batch)
    decoder = None
    if device.startswith("cuda"):
        from workzone.accel.decode import DeviceDecoder

        decoder = DeviceDecoder(device, cpu_share=cpu_share, workers=min(16, len(os.sched_getaffinity(0))))
    try:
        p_fast = pipeline_probabilities(with_backend(cfg, "torch"), path.parent, items, batch=batch, device=device,
                                        decode=None if decoder is None else decoder.decode)
    finally:
        if decoder is not None:
            decoder.close()
    return compare(p_ref, p_fast, tolerance=tolerance, device=device), p_ref, p_fast


def pipeline_probabilities(cfg: "PipelineConfig", base_dir: Path, items: Sequence[tuple[str, bytes]], *,
                           batch: int = 64, device: str = "cpu",
                           decode: Callable[[list[bytes], list[str]], list] | None = None) -> np.ndarray:
    """P(road work) of a pipeline on ``(name, JPEG bytes)`` items, in order (Pillow decodes unless ``decode``)."""
    from workzone.api import Pipeline
    from workzone.io.images import decode_image

    out: list[float] = []
    with Pipeline(cfg, base_dir, device=device) as pipe:
        for i in range(0, len(items), batch):
            names, blobs = [n for n, _ in items[i:i + batch]], [b for _, b in items[i:i + batch]]
            imgs = decode(blobs, names) if decode is not None else [decode_image(b, source=s)
                                                                   for b, s in zip(blobs, names)]
            out += [d.probability for d in pipe.run_decoded(imgs)]
    return np.array(out)


def compare(p_ref: np.ndarray, p_new: np.ndarray, *, tolerance: float = 0.02, device: str = "cpu") -> ParityReport:
    """How far ``p_new`` is from ``p_ref`` image by image (decisions at 0.5)."""
    diff = np.abs(p_ref - p_new)
    flip = (p_ref > 0.5) != (p_new > 0.5)
    near = (np.abs(p_ref - 0.5) <= tolerance) | (np.abs(p_new - 0.5) <= tolerance)
    n = len(p_ref)
    return ParityReport(n, float((diff <= tolerance).mean()) if n else 1.0, float(diff.max()) if n else 0.0,
                        int(flip.sum()), int((flip & ~near).sum()), tolerance, device)


#: The CPU run scheme before issue 23: batches of 8 in runs of 4 over every intra-op thread, one run at a time.
OPERATOR_SCHEME: dict[str, Any] = {"parallel": "operators", "batch_size": 8}


def cpu_scheme_parity(items: Sequence[tuple[str, bytes]], *, pipeline: str = "default", batch: int = 8,
                      reference: Mapping[str, Any] = OPERATOR_SCHEME) -> tuple[ParityReport, np.ndarray, np.ndarray]:
    """The pipeline as shipped against the same pipeline with its onnxruntime stages run the ``reference`` way.

    ``reference`` sets the :class:`~workzone.stages._onnx.CpuRunParams` of every stage that has them (and
    ``batch_size`` where the stage has one), so the two runs differ only in how runs are split over threads.

    Returns:
        The report (tolerance 0.02), the reference probabilities and the shipped ones, in ``items``' order.
    """
    from workzone.config.backend import with_stage_params
    from workzone.config.loader import load_pipeline_config
    from workzone.stages._onnx import CpuRunParams

    cfg, path = load_pipeline_config(pipeline)
    updates = {s.name: {k: v for k, v in reference.items() if k in type(s.params).model_fields}
               for t in cfg.tiers for s in t.stages if isinstance(s.params, CpuRunParams)}
    p_ref = pipeline_probabilities(with_stage_params(cfg, updates), path.parent, items, batch=batch)
    p_new = pipeline_probabilities(cfg, path.parent, items, batch=batch)
    return compare(p_ref, p_new), p_ref, p_new
