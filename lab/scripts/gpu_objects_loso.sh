#!/usr/bin/env bash
# Train the object detector's leave-one-source-out fold models (and, with FULL_SEEDS, the full model) on one GPU
# machine (`device` run), from the compact corpus this machine wrote. Carry .gpu holding:
#   .gpu/corpus/                  the compact copy with the site cut-outs (OBJECT_DETECTOR_CARD.md, Reproduce
#                                 step 1; 44.7 MB on 2026-12-07). With the tracked tree (~29 MB, 25 MB of it the
#                                 shipped ONNX models, which training does not read) it passes the call's 64 MiB:
#                                 leave the models out of the copied tree for this call (untracked in the index
#                                 and excluded, working files untouched; restored right after).
#   .gpu/lite0_trimmed_fp16.pt    the trimmed ImageNet backbone (1.5 MB)
#   .gpu/whl/                     wheels the machine lacks (efficientnet-lite-pytorch, pydantic and its deps)
# Usage: run(command="SECONDS_PER_FOLD=500 bash lab/scripts/gpu_objects_loso.sh",
#            carry=[".gpu/corpus", ".gpu/lite0_trimmed_fp16.pt", ".gpu/whl"], timeout_s=590)
# FOLDS picks the folds (default: the five of LOSO_FOLDS, no full model); FULL_SEEDS=0,1 adds the full model.
# P_SITE: share of pasted kits that are site kits (workers, machines from .gpu/corpus/objects-v1/cutouts; 0 = none).
# Fewer processes than the shipped run's seven get more steps each in the same wall time (the loaders, on the
# machine's 16 cores, are what limits them). The run comes back in $OUT as TAG-objects/ (`objects-pack`:
# fold_states.pt, oof_detections.json.gz, logs.txt, and the full model's ONNX when trained).
set -euo pipefail
TAG=${TAG:-d}
RUN=/tmp/objects-$TAG
SITE=/tmp/objects_site-$TAG
# The wheels are unpacked, not pip-installed (the machine's pip refused them); NO_WHL=1 for a CPU dry run here.
if [ "${NO_WHL:-0}" != 1 ]; then mkdir -p "$SITE" && for w in .gpu/whl/*.whl; do python -m zipfile -e "$w" "$SITE"; done; fi
export PYTHONPATH=$PWD/src:$PWD/lab/src:$SITE
python -c "import pydantic, efficientnet_lite_pytorch"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"; nproc; } > "$OUT/$TAG-device.txt"
FOLDS=${FOLDS:-tracon+culane,wmaia9+small,camvid+nexar,stock+cctv,gtsdb}
if [ -n "${FULL_SEEDS:-}" ]; then FOLDS="$FOLDS,full"; fi
start=$(date +%s)
python -m workzone_train.object_train loso --data .gpu/corpus --out "$RUN" --gpus 1 --workers "${WORKERS:-2}" \
  --seconds "${SECONDS_PER_FOLD:-500}" --full-seconds "${SECONDS_FULL:-500}" --folds "$FOLDS" \
  --seeds "${FULL_SEEDS:-0}" --device "${DEVICE:-cuda}" --weights .gpu/lite0_trimmed_fp16.pt \
  --p-site "${P_SITE:-0.2}" || echo "some folds failed"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/$TAG-device.txt"
python -m workzone_train.object_train pack --run "$RUN" --out "$OUT/$TAG-objects"
