"""Parity of the torch object path with the onnxruntime path on real images (test and benchmark alike).

Both run the same pipeline (``default-gpu``: the object decision alone) on the same JPEG bytes: the
reference with onnxruntime on the CPU and Pillow decoding, the other with the torch backend on
``device``, decoding with nvJPEG on CUDA. The probabilities are compared image by image.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["ParityReport", "dev_jpegs", "object_parity"]


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
    from workzone.api import Pipeline
    from workzone.config.loader import load_pipeline_config
    from workzone.io.images import decode_image

    cfg, path = load_pipeline_config(pipeline)
    labels = [p for p, _ in items]
    blobs = [b for _, b in items]
    with Pipeline(with_backend(cfg, "onnxruntime"), path.parent, device="cpu") as ref:
        p_ref = np.array([d.probability for i in range(0, len(blobs), batch)
                          for d in ref.run_decoded([decode_image(b, source=s) for b, s in
                                                    zip(blobs[i:i + batch], labels[i:i + batch])])])
    decoder = None
    if device.startswith("cuda"):
        from workzone.accel.decode import DeviceDecoder

        decoder = DeviceDecoder(device, cpu_share=cpu_share, workers=min(16, len(os.sched_getaffinity(0))))
    try:
        with Pipeline(with_backend(cfg, "torch"), path.parent, device=device) as fast:
            p_fast = []
            for i in range(0, len(blobs), batch):
                chunk, names = blobs[i:i + batch], labels[i:i + batch]
                imgs = (decoder.decode(chunk, names) if decoder is not None
                        else [decode_image(b, source=s) for b, s in zip(chunk, names)])
                p_fast += [d.probability for d in fast.run_decoded(imgs)]
    finally:
        if decoder is not None:
            decoder.close()
    p_fast_a = np.array(p_fast)
    diff = np.abs(p_ref - p_fast_a)
    flip = (p_ref > 0.5) != (p_fast_a > 0.5)
    near = (np.abs(p_ref - 0.5) <= tolerance) | (np.abs(p_fast_a - 0.5) <= tolerance)
    report = ParityReport(len(items), float((diff <= tolerance).mean()) if len(items) else 1.0,
                          float(diff.max()) if len(items) else 0.0, int(flip.sum()), int((flip & ~near).sum()),
                          tolerance, device)
    return report, p_ref, p_fast_a
