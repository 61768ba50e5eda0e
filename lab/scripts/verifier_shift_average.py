"""Lab probe (issue 22/23): does averaging the verifier's answer over shifted windows make its decision less sensitive
to small moves of the detector's boxes?

Usage:
    python lab/scripts/verifier_shift_average.py [LIMIT] > benchmarks/results/verifier_shift_average.md

The default-gpu detector (onnxruntime) on LIMIT dev images of roadwork-v1 (default: all 469); the fp32 verifier
(onnxruntime) over its candidates, either on one window per candidate or averaged over five (the window and the
window moved by one pixel left, right, up, down); each with the exact boxes and with every box coordinate moved by
uniform noise of +-0.25 px (benchmarks/results/verifier_box_sensitivity.md: the size of move that explains the GPU
path's parity). The verified decision (the shipped sidecar's, fitted on one-window answers) as a probability.
A probe, not a shipped change: averaged answers would need their decision refitted and the pooled table.
"""
import sys, time, asyncio, dataclasses
import numpy as np, onnxruntime as ort
from workzone.config.loader import load_pipeline_config
from workzone.io.images import decode_image
from workzone.stages.base import StageContext
from workzone.stages.roadwork_detector import RoadworkDetectorParams, RoadworkDetectorStage
from workzone.throughput.parity import dev_jpegs
from workzone.verified_evidence import candidate_crops, verified_features, VerifiedDecision
import json
limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
cfg, _ = load_pipeline_config("default-gpu")
specs = {s.name: s for t in cfg.tiers for s in t.stages}
det = RoadworkDetectorStage("objects", RoadworkDetectorParams(**{**specs["objects"].params.model_dump(), "backend": "onnxruntime"}), context=StageContext())
items = dev_jpegs("../shared/data/roadwork-v1", limit=limit)
imgs = [decode_image(b, source=s) for s, b in items]
async def go():
    await det.load()
    try: return await det.predict(imgs)
    finally: await det.aclose()
outs = asyncio.run(go())
path = StageContext().resolve("builtin:roadwork_verifier.onnx")
meta = json.loads(path.with_suffix(".json").read_text())
sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
dec = VerifiedDecision(meta["decision"]); classes = meta["classes"]
def cands(o):
    bs = sorted([b for b in o.evidence.boxes if b.score >= 0.05], key=lambda b: -b.score)[:8]
    return bs
C = [cands(o) for o in outs]
def p_of(jitter, shifts, seed):
    """Per image: the verified decision's probability, and each candidate's (P(object) >= 0.5, top class)."""
    rng = np.random.default_rng(seed); out, states = [], []
    for im, bs in zip(imgs, C):
        if not bs:
            out.append(1/(1+np.exp(-dec.log_odds(verified_features(np.zeros(0), [], np.zeros((0, len(classes))), classes)))))
            states.append(())
            continue
        xy = np.array([(b.x1, b.y1, b.x2, b.y2) for b in bs]) + rng.uniform(-jitter, jitter, (len(bs), 4))
        probs = np.mean([sess.run(None, {"crops": candidate_crops(im.pixels, xy + np.array([dx, dy, dx, dy]), size=96, context=2.0, max_side=640)})[0]
                         for dx, dy in shifts], axis=0).astype(np.float64)
        out.append(1/(1+np.exp(-dec.log_odds(verified_features(np.array([b.score for b in bs]), [b.label for b in bs], probs, classes)))))
        p_obj = 1.0 - probs[:, [classes.index("none"), classes.index("sign_other")]].sum(1)
        states.append(tuple(zip((p_obj >= 0.5).tolist(), probs.argmax(1).tolist())))
    return np.array(out), states
one = [(0, 0)]
five = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
from workzone.throughput.machine import describe_machine
t = time.time()
print("# The verifier's decision under +-0.25 px box moves: one window against the mean of five\n")
print(f"- Command: `python lab/scripts/verifier_shift_average.py{' ' + str(limit) if limit else ''}`")
print(f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
print("- Machine: " + ", ".join(f"{k} {v}" for k, v in describe_machine("cpu").items()) + "\n")
print("| verifier answer per candidate | images within 0.02 of the exact boxes' decision | max abs dp | decisions differ "
      "| of the images moved more than 0.02: a candidate's count changed (P(object) across 0.5, or its top class) |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, sh in (("one window", one), ("mean of 5 windows (centre, +-1 px in x and y)", five)):
    (a, sa), (b, sb) = p_of(0.0, sh, 0), p_of(0.25, sh, 1)
    d = np.abs(a - b)
    moved = np.flatnonzero(d > 0.02)
    counted = sum(1 for i in moved if sa[i] != sb[i])
    print(f"| {name} | {(d <= 0.02).mean():.1%} | {d.max():.4f} | {int(((a > .5) != (b > .5)).sum())} | "
          f"{counted} of {len(moved)} |")
print(f"\n{len(imgs)} dev images, {time.time() - t:.0f} s.")
