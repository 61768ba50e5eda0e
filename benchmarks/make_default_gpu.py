"""Build ``pipelines/default-gpu.yaml``: the default without sign OCR, for GPU hosts.

Usage:
    python benchmarks/make_default_gpu.py

What it takes from where (nothing is fitted here, nothing is hand-set):
- the tiers of ``default.yaml`` without its ``sign_ocr`` stage: the object detector (its tier's fusion as
  ``default.yaml``'s objects tier was fitted, without the signs weight; no image leaves there, as in the default,
  where every exit after the detector cost MCC out of fold) and the candidate verifier, on the fp32 graph (the
  int8 one is a CPU saving; on a GPU both stages run through torch);
- the verify tier's answer is the verified decision itself (weight 1, bias 0): the verifier sidecar's decision
  block is already a logistic regression fitted on out-of-fold candidates and answers over the eleven sources, and
  without sign OCR there is nothing left to pool it with;
- the ``tuning`` block's out-of-fold figures from ``benchmarks/results/loso_eleven_sources.json`` (the objects and
  "verify (fine-tuned, class-aware)" columns: the same two decisions, each image scored by models that never saw
  its source), and the stage costs from ``default.yaml``'s (the fp32 verifier's from ``int8_verifier.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workzone.config.loader import dump_pipeline, load_pipeline_config
from workzone.config.schema import FusionParams

REPO = Path(__file__).resolve().parents[1]
LOSO = REPO / "benchmarks/results/loso_eleven_sources.json"
#: The fp32 verifier's CPU cost per image (bare session, int8_verifier.md, "13.6 CPU-ms per image").
FP32_VERIFIER_MS = 13.6
#: Crops per forward of the verifier on the torch backend: a batch of 1,024 images proposes up to 8,192 candidates,
#: two forwards (the backend's default, 512, would be sixteen: each a few hundred operator launches).
VERIFIER_MAX_BATCH = 4096
DESCRIPTION = (
    "The default without sign OCR, for GPU hosts (workzone serve --device cuda): the work-zone object detector, then "
    "the candidate verifier over its boxes, both through torch on the GPU, so no CPU-bound OCR caps throughput (the "
    "OCR tier adds {signs} pooled MCC out of fold in the default). The detector sees each image as it was trained on "
    "it (320 px, JPEG 72) and the verifier crops each candidate from the decoded image at its own resolution, both "
    "on the device with Pillow's and libjpeg's pixels (docs/gpu.md). No image leaves before the verifier, as in the "
    "default. The verify tier's answer is the verified decision itself (weight 1, bias 0): a logistic regression "
    "fitted on out-of-fold candidates and verifier answers over the eleven sources (the verifier sidecar's decision "
    "block), pooled out-of-fold MCC {mcc:.3f} (benchmarks/results/loso_eleven_sources.md). Built by "
    "benchmarks/make_default_gpu.py.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "src/workzone/pipelines/default-gpu.yaml")
    args = ap.parse_args()

    default, _ = load_pipeline_config("default")
    loso = json.loads(LOSO.read_text(encoding="utf-8"))
    objects_col, verify_col = loso["objects"], loso["verify (fine-tuned, class-aware)"]
    tiers = []
    for tier in default.tiers:
        stages = tuple(s for s in tier.stages if s.kind != "sign_ocr")
        if not stages:
            continue
        if any(s.kind == "object_verifier" for s in stages):
            stages = tuple(s.model_copy(update={"params": s.params.model_copy(update={
                "model": "builtin:roadwork_verifier.onnx", "max_batch": VERIFIER_MAX_BATCH}), "cost": FP32_VERIFIER_MS})
                for s in stages)
            fusion = FusionParams(bias=0.0, weights={s.name: 1.0 for s in stages}, stages=tuple(s.name for s in stages))
        else:
            names = {s.name for t in tiers for s in t.stages} | {s.name for s in stages}
            fusion = tier.fusion.model_copy(update={"weights": {k: v for k, v in tier.fusion.weights.items()
                                                                if k in names}})
        tiers.append(tier.model_copy(update={"stages": stages, "fusion": fusion}))
    costs = {s.name: (s.cost if s.cost is not None else default.tuning["stage_cost_ms"][s.name])
             for t in tiers for s in t.stages}
    tuning = {
        "fitted_on": "no refit: the default's objects fusion (without signs) and the verifier sidecar's decision",
        "out_of_fold": "benchmarks/results/loso_eleven_sources.json (columns 'objects', 'verify (fine-tuned, "
                       "class-aware)')",
        "n": verify_col["n"], "positives": verify_col["positives"],
        "mcc": round(verify_col["pooled_mcc"], 4),
        "auc": round(verify_col["auc"], 4) if isinstance(verify_col.get("auc"), float) else verify_col.get("auc"),
        # The exits were chosen out of fold for the default (with the sign OCR tier): no image leaves before the
        # verifier there, and the detector's exit cost MCC; the same tiers follow here.
        "exit_tiers": {"chosen": [], "from": "default.yaml (the same tiers with sign OCR)",
                       "candidates": [c for c in default.tuning["exit_tiers"]["candidates"]
                                      if "signs" not in c["may_exit"]]},
        "exit_rates": [0.0, 1.0],
        "mcc_if_every_image_ran_to_tier": [round(objects_col["pooled_mcc"], 4), round(verify_col["pooled_mcc"], 4)],
        "stage_cost_ms": costs,
        "mean_cost_ms": round(sum(costs.values()), 2),
        "balanced": True,
    }
    desc = DESCRIPTION.format(signs=default.tuning["contribution"]["signs"]["delta_mcc"], mcc=verify_col["pooled_mcc"])
    config = default.model_copy(update={"name": "default-gpu", "description": desc, "tiers": tuple(tiers),
                                        "tuning": tuning})
    args.out.write_text(dump_pipeline(config), encoding="utf-8")
    print(f"wrote {args.out}: out-of-fold MCC {tuning['mcc']} (objects alone {tuning['mcc_if_every_image_ran_to_tier'][0]})")


if __name__ == "__main__":
    main()
