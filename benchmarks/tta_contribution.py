"""What test-time augmentation (flip, five crops) adds to the tier-1 classifier, and what it costs.

Usage:
    python benchmarks/tta_contribution.py [--manifest ../shared/data/roadwork-v1/manifest.csv]
        [--split dev] [--pipeline src/workzone/pipelines/default.yaml] [--limit N]
        [--out benchmarks/results/tta_contribution.md]

Protocol (written into the results file):
- Each variant is the ``onnx_classifier`` stage with the builtin ``roadwork_lite0.onnx`` and the
  params in ``VARIANTS``, run as the cascade runs it: ``predict`` on decoded images, one image per
  call, after a warm-up; ms / image is wall time per call.
- "Undecided" images are those the pipeline's first tier does not exit on: the tier's fused
  probability ``sigmoid(pool_log_odds({classifier: plain logit}, tier.fusion))`` is strictly between
  ``exit.lower`` and ``exit.upper`` (the cascade's rule). A TTA tier would only run on them.
- MCC is at logit 0 (p = 0.5) of each variant's own score, on every image and on the undecided ones;
  AUC on the undecided ones is threshold-free. "Cascade" MCC: tier-1 exits keep the tier-1 decision
  and the undecided images take the variant's logit > 0, so the plain row is the classifier-only
  cascade (the shipped tier 2 also runs cones and OCR; those are measured in tier2_contribution.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

from workzone.config.loader import load_pipeline_config  # noqa: E402
from workzone.evaluation.metrics import matthews_corrcoef, roc_auc  # noqa: E402
from workzone.fusion.calibration import fit_logistic  # noqa: E402
from workzone.fusion.pooling import pool_log_odds  # noqa: E402
from workzone.io.images import decode_image  # noqa: E402
from workzone.stages.registry import create_stage  # noqa: E402
from workzone_train.data import load_samples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "builtin:roadwork_lite0.onnx"
# name -> onnx_classifier params; "plain" is tier 1 as shipped.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "flip": {"flip": True},
    "crops5": {"crops": 5},
    "flip+crops5": {"flip": True, "crops": 5},
}


async def _score_all(images: list) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-image logits and per-call milliseconds of every variant, the variants interleaved image by
    image so that load from other jobs on the shared cores hits them alike."""
    stages = {n: create_stage("onnx_classifier", "classifier", {"model": MODEL, **p}) for n, p in VARIANTS.items()}
    for stage in stages.values():
        await stage.load()
        await stage.warmup()
        # A real-sized warm-up call: the first call at a new batch shape pays for allocation.
        await stage.predict(images[:1])
    z: dict[str, list[float]] = {n: [] for n in stages}
    ms: dict[str, list[float]] = {n: [] for n in stages}
    for k, im in enumerate(images):
        if k % 100 == 0:
            print(f"  image {k} / {len(images)}", flush=True)
        for name, stage in stages.items():
            t = time.perf_counter()
            out = (await stage.predict([im]))[0]
            ms[name].append((time.perf_counter() - t) * 1000)
            z[name].append(out.log_odds)
    for stage in stages.values():
        await stage.aclose()
    return ({n: np.array(v, np.float64) for n, v in z.items()}, {n: np.array(v, np.float64) for n, v in ms.items()})


def _cv_recalibrated(z: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold decisions of a 1-D logistic recalibration ``bias + w * z`` (stratified k-fold).

    The shipped cascade never thresholds the raw logit at 0: every tier refits a bias and weight
    (``workzone tune``). Refitting each variant the same way keeps a calibration shift from passing
    for an accuracy difference; out-of-fold, so no image is decided by a fit that saw it.
    """
    if len(np.unique(y)) < 2 or min(np.bincount(y)) < folds:
        raise SystemExit(f"recalibration needs at least {folds} images of each label; use a larger --limit")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % folds
    pred = np.zeros(len(y), int)
    for f in range(folds):
        test = fold == f
        fit = fit_logistic(z[~test, None], y[~test], l2=1e-2)
        pred[test] = (fit.bias + fit.weights[0] * z[test] > 0).astype(int)
    return pred


def _mcc(y: np.ndarray, pred: np.ndarray) -> float:
    return matthews_corrcoef(y.astype(int).tolist(), pred.astype(int).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=str(REPO.parent / "shared/data/roadwork-v1/manifest.csv"))
    ap.add_argument("--split", default="dev")
    ap.add_argument("--pipeline", default=str(REPO / "src/workzone/pipelines/default.yaml"))
    ap.add_argument("--limit", type=int, default=0, help="N images spread evenly over the split (0 = all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/tta_contribution.md"))
    args = ap.parse_args()

    samples = load_samples(args.manifest, splits=[args.split])
    if args.limit and args.limit < len(samples):
        # Evenly spaced rather than the first N: the manifest is grouped by source and label.
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, args.limit).round().astype(int)]
    y = np.array([s.label for s in samples], int)
    images = [decode_image(s.path) for s in samples]
    cfg, _ = load_pipeline_config(args.pipeline)
    tier = cfg.tiers[0]
    tier_stages = [s.name for s in tier.stages]
    if len(tier_stages) != 1:
        raise SystemExit(f"tier 1 of {args.pipeline} has stages {tier_stages}; this benchmark expects one classifier")

    print(f"scoring {', '.join(VARIANTS)} on {len(images)} images...", flush=True)
    logits, ms = asyncio.run(_score_all(images))

    # Tier-1 fused probability, exactly as the cascade pools it.
    p1 = np.array([1 / (1 + math.exp(-pool_log_odds({tier_stages[0]: float(z)}, tier.fusion))) for z in logits["plain"]])
    lower = -np.inf if tier.exit.lower is None else tier.exit.lower
    upper = np.inf if tier.exit.upper is None else tier.exit.upper
    undecided = (p1 > lower) & (p1 < upper)
    tier1_pred = (p1 >= upper).astype(int)  # what the exits decide; only used where not undecided
    plain_ms = float(np.mean(ms["plain"]))
    share = float(undecided.mean())

    pipeline_rel = Path(args.pipeline).resolve().relative_to(REPO) if Path(args.pipeline).resolve().is_relative_to(REPO) else args.pipeline
    cmd = "python benchmarks/tta_contribution.py" + (f" --split {args.split}" if args.split != "dev" else "") \
        + (f" --limit {args.limit}" if args.limit else "")
    lines = [
        "# Test-time augmentation (flip, five crops) on the tier-1 classifier", "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {describe_machine()}",
        f"- command: `{cmd}`",
        f"- data: split `{args.split}` of `{Path(args.manifest).parent.name}`, {len(y)} images ({int(y.sum())} road work), "
        "reviewed label fixes applied (`workzone_train.data.LABEL_FIXES`)",
        f"- model: `{MODEL}` through the `onnx_classifier` stage; crops are centre + 4 corners at the default "
        "`crop_scale` 0.8, each view averaged in logit space",
        f"- undecided after tier 1 of `{pipeline_rel}`: fused p = sigmoid({tier.fusion.bias:g} + "
        f"{tier.fusion.weights.get(tier_stages[0], 1.0):g} * logit) strictly inside ({tier.exit.lower:g}, "
        f"{tier.exit.upper:g}): {int(undecided.sum())} images ({share:.1%}), {int(y[undecided].sum())} road work",
        "- cascade MCC: tier-1 exits keep their decision, the undecided images take the variant's logit > 0 "
        "(classifier-only tier 2; the shipped tier 2 also has cones and OCR, see tier2_contribution.md)",
        "- recalibrated: each variant's logit refitted as bias + w * logit (L2 0.01, as `workzone tune`) by stratified "
        "5-fold cross-validation on the split, decision on the out-of-fold fit; the shipped cascade always refits, "
        "so this is the fairer comparison",
        "- timing: one image per `predict` call after warm-up, the variants interleaved image by image; the 2 cores "
        "are shared with other jobs, so compare variants within one run. Expected ms as tier 2 = plain + "
        "(undecided share) x variant",
        "",
        "| variant | views / image | MCC all (logit > 0) | MCC undecided (logit > 0) | AUC undecided | cascade MCC "
        "(logit > 0) | cascade MCC (recalibrated) | MCC undecided (recalibrated) | mean ms / image | p50 ms | p95 ms "
        "| expected ms / image as tier 2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, params in VARIANTS.items():
        z = logits[name]
        pred = (z > 0).astype(int)
        cascade = np.where(undecided, pred, tier1_pred)
        recal = _cv_recalibrated(z, y)
        cascade_recal = np.where(undecided, recal, tier1_pred)
        auc = roc_auc(y[undecided].tolist(), z[undecided].tolist())
        views = (1 + params.get("crops", 0)) * (2 if params.get("flip") else 1)
        extra = "-" if name == "plain" else f"{plain_ms + share * float(np.mean(ms[name])):.1f}"
        lines.append(
            f"| {name} | {views} | {_mcc(y, pred):.4f} | {_mcc(y[undecided], pred[undecided]):.4f} | "
            f"{'-' if auc is None else f'{auc:.4f}'} | {_mcc(y, cascade):.4f} | {_mcc(y, cascade_recal):.4f} | "
            f"{_mcc(y[undecided], recal[undecided]):.4f} | {np.mean(ms[name]):.1f} | "
            f"{np.percentile(ms[name], 50):.1f} | {np.percentile(ms[name], 95):.1f} | {extra} |")

    lines += ["", "## Errors at logit 0", "",
              "| variant | FP all | FN all | FP undecided | FN undecided | decisions changed vs plain (undecided) |",
              "| --- | --- | --- | --- | --- | --- |"]
    plain_pred = (logits["plain"] > 0).astype(int)
    for name in VARIANTS:
        pred = (logits[name] > 0).astype(int)
        u = undecided
        lines.append(f"| {name} | {int(((pred == 1) & (y == 0)).sum())} | {int(((pred == 0) & (y == 1)).sum())} | "
                     f"{int(((pred == 1) & (y == 0) & u).sum())} | {int(((pred == 0) & (y == 1) & u).sum())} | "
                     f"{int((pred != plain_pred)[u].sum())} |")
    diff = logits["flip+crops5"] - logits["plain"]
    lines += ["", f"TTA (flip+crops5) minus plain logit over all images: mean {diff.mean():+.3f}, "
              f"mean |diff| {np.abs(diff).mean():.3f}, max |diff| {np.abs(diff).max():.3f}."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
