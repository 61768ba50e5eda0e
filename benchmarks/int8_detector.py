"""Does a statically quantised (int8 QDQ) object detector keep the decision? Writes results/int8_detector.md.

Calibrates onnxruntime's static quantisation (per-channel int8 weights, uint8 activations) on 48 train
images of roadwork-v1, then compares on the 469 dev images: the bare session's time per image (batches of
8, fastest of three) and the default-gpu probabilities (fusion of the stage's log-odds) of the int8 graph
against the shipped fp32 one. Run: python benchmarks/int8_detector.py [DATA]
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workzone.throughput.machine import describe_machine
from workzone.evaluation.metrics import matthews_corrcoef
from workzone.io.images import decode_image
from workzone.stages.base import StageContext
from workzone.stages.roadwork_detector import ObjectDetectorRunner

BIAS, WEIGHT = 0.137867, 1.089227  # pipelines/default-gpu.yaml fusion


def main(data: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rows = list(csv.DictReader((data / "manifest.csv").open(newline="", encoding="utf-8")))
    model = StageContext().resolve("builtin:roadwork_objects.onnx")
    fp32 = ObjectDetectorRunner(model)
    calib = fp32._inputs([decode_image(data / r["path"]) for r in rows if r["split"] == "train"][:48])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"image": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    tmp = Path(tempfile.mkdtemp())
    quant_pre_process(str(model), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(str(tmp / "pre.onnx"), str(tmp / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    (tmp / "int8.json").write_bytes(model.with_suffix(".json").read_bytes())
    int8 = ObjectDetectorRunner(tmp / "int8.onnx")
    dev = [r for r in rows if r["split"] == "dev"]
    imgs = [decode_image(data / r["path"]) for r in dev]
    x = fp32._inputs(imgs[:32])

    def ms(runner: ObjectDetectorRunner) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, len(x), 8):
                runner.session.run(None, {"image": x[i:i + 8]})
            times.append((time.perf_counter() - t) / len(x) * 1000)
        return min(times)

    t32, t8 = ms(fp32), ms(int8)
    probs = {}
    for name, runner in (("fp32", fp32), ("int8", int8)):
        z = np.array(runner.decide(imgs, score_threshold=0.01, max_detections=50)[1])
        probs[name] = 1 / (1 + np.exp(-(BIAS + WEIGHT * z)))
    labels = np.array([int(r["label"]) for r in dev])
    diff = np.abs(probs["fp32"] - probs["int8"])
    flips = int(((probs["fp32"] > 0.5) != (probs["int8"] > 0.5)).sum())
    score = {k: matthews_corrcoef(labels.tolist(), (p > 0.5).astype(int).tolist()) for k, p in probs.items()}
    machine = describe_machine("cpu")
    lines = ["# int8 object detector (onnxruntime static quantisation)", "",
             f"- Command: `python benchmarks/int8_detector.py {data}`",
             "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             "| graph | ms per image (bare session, batch 8, fastest of 3) | dev MCC (default-gpu fusion) |",
             "| --- | ---: | ---: |",
             f"| fp32 (shipped) | {t32:.1f} | {score['fp32']:.3f} |",
             f"| int8 QDQ, per-channel | {t8:.1f} | {score['int8']:.3f} |", "",
             f"int8 vs fp32 on {len(dev)} dev images: {(diff <= 0.02).mean():.1%} of probabilities within 0.02, "
             f"max |dp| {diff.max():.3f}, {flips} decisions differ. Not shipped: it does not keep the decision."]
    out = Path(__file__).parent / "results" / "int8_detector.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/roadwork-v1"))
