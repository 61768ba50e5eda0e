"""How much does the object decision move when the decoder's pixels differ slightly? Writes
results/decode_sensitivity.md.

Why: nvJPEG's IDCT and 4:2:0 chroma upsampling are not libjpeg's, so the GPU path decodes slightly
different pixels than the CPU path. This runs the onnxruntime path on the 469 dev images as decoded by
Pillow (libjpeg) and on two perturbations of them: chroma upsampled by repetition instead of libjpeg's
triangle filter, and one sample in ten moved by one grey level. Run: python benchmarks/decode_sensitivity.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from workzone.throughput.machine import describe_machine
from workzone.throughput.parity import dev_jpegs
from workzone.io.images import decode_image
from workzone.stages.base import StageContext
from workzone.stages.roadwork_detector import ObjectDetectorRunner
from workzone.types import Image

BIAS, WEIGHT = 0.137867, 1.089227  # pipelines/default-gpu.yaml fusion


def repeated_chroma(px: np.ndarray) -> np.ndarray:
    """The image with its chroma averaged 2 x 2 and repeated (no triangle upsampling)."""
    ycc = np.asarray(PILImage.fromarray(px).convert("YCbCr")).astype(np.float32)
    h, w = px.shape[:2]
    c = np.pad(ycc[:, :, 1:], ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    c = c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2, 2).mean((1, 3))
    ycc[:, :, 1:] = np.repeat(np.repeat(c, 2, 0), 2, 1)[:h, :w]
    return np.asarray(PILImage.fromarray(np.clip(np.round(ycc), 0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


def main(data: Path) -> None:
    runner = ObjectDetectorRunner(StageContext().resolve("builtin:roadwork_objects.onnx"))
    imgs = [decode_image(b) for _, b in dev_jpegs(data)]
    rng = np.random.default_rng(0)

    def probs(images: list[Image]) -> np.ndarray:
        z = np.array(runner.decide(images, score_threshold=0.01, max_detections=50)[1])
        return 1 / (1 + np.exp(-(BIAS + WEIGHT * z)))

    def one_in_ten(px: np.ndarray) -> np.ndarray:
        moved = (rng.random(px.shape) < 0.1) * rng.choice([-1, 1], px.shape)
        return np.clip(px.astype(int) + moved, 0, 255).astype(np.uint8)

    ref = probs(imgs)
    lines = ["# The object decision under small decoder differences", "",
             "- Command: `python benchmarks/decode_sensitivity.py`",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in describe_machine("cpu").items()), "",
             f"default-gpu probabilities on the {len(imgs)} dev images, each perturbation against Pillow's pixels:", "",
             "| pixels | within 0.02 | max abs dp | decisions that differ | of them away from 0.5 +- 0.02 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, make in (("chroma repeated, not triangle-upsampled", repeated_chroma), ("1 sample in 10 moved by +-1", one_in_ten)):
        p = probs([Image(make(im.pixels)) for im in imgs])
        d = np.abs(p - ref)
        flip = (p > 0.5) != (ref > 0.5)
        near = (np.abs(p - 0.5) <= 0.02) | (np.abs(ref - 0.5) <= 0.02)
        lines.append(f"| {name} | {(d <= 0.02).mean():.1%} | {d.max():.3f} | {int(flip.sum())} | {int((flip & ~near).sum())} |")
    lines += ["", "The decision counts boxes above 0.3 and re-encodes every image as JPEG 72 first, so a change of one",
              "grey level can move a quantised coefficient and a box across 0.3: a decoder must give libjpeg's pixels",
              "for the GPU path to equal the CPU path (`--cpu-share 1` decodes with libjpeg on CPU threads)."]
    out = Path(__file__).parent / "results" / "decode_sensitivity.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/roadwork-v1"))
