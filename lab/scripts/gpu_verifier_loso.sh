#!/usr/bin/env bash
# Fine-tune the candidate verifier's fold models and full model on one GPU machine (`device` run), from what
# `workzone train verifier-pack` wrote here. Carry .gpu holding:
#   .gpu/verifier_pack.npz   the crop pack (workzone train verifier-pack ... --out .gpu/verifier_pack.npz)
#   .gpu/lite0_fp16.pt       ImageNet Lite0 weights, float16, without the classifier (VERIFIER_CARD.md)
#   .gpu/whl/                wheels the machine lacks: efficientnet-lite-pytorch, pydantic and its four deps
# Usage: run(command="bash lab/scripts/gpu_verifier_loso.sh [EPOCHS] [verifier-loso options...]",
#            carry=[".gpu/verifier_pack.npz", ".gpu/lite0_fp16.pt", ".gpu/whl"]);
# TAG names the run (default v), SEEDS the full model's seeds (default 0,1; `--folds A,B --fold-seed 1` after
# EPOCHS: a second seed of the fold models alone), PACK the crop pack (default
# .gpu/verifier_pack.npz; e.g. .gpu/verifier_pack_union2.npz, the candidates of the whole-image and tiled passes). The run comes back in $OUT as
# $TAG-run.tar.gz (probabilities, summaries, logs) and $TAG-verifier-seed*.pt (the full models).
set -euo pipefail
EPOCHS=${1:-15}
shift || true
TAG=${TAG:-v}
RUN=/tmp/verifier-$TAG
# The wheels are unpacked, not pip-installed: the machine's pip refused them (pydantic was missing in the first run).
SITE=/tmp/verifier_site-$TAG  # one per run: two runs may share a call
mkdir -p "$SITE" && for w in .gpu/whl/*.whl; do python -m zipfile -e "$w" "$SITE"; done
export PYTHONPATH=$PWD/src:$PWD/lab/src:$SITE
python -c "import pydantic, efficientnet_lite_pytorch"
python -c "from PIL import features; assert features.check('webp'), 'Pillow without WebP: repack as JPEG'"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; } > "$OUT/$TAG-device.txt"
start=$(date +%s)
python -m workzone_train.verifier_tune --pack "${PACK:-.gpu/verifier_pack.npz}" --out "$RUN" --weights .gpu/lite0_fp16.pt \
  --epochs "$EPOCHS" --workers 2 --seeds "${SEEDS:-0,1}" --max-seconds "${MAX_SECONDS:-420}" "$@" \
  || echo "some folds failed"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/$TAG-device.txt"
tar -C "$RUN" -czf "$OUT/$TAG-run.tar.gz" --exclude='*.ckpt' --exclude='*.pt' .
for f in "$RUN"/verifier-seed*.pt; do [ -e "$f" ] || continue; cp "$f" "$OUT/$TAG-$(basename "$f")"; done  # none: folds only
# FOLD_WEIGHTS=1 also brings back each fold model (9.5 MB each): with SEEDS=0 that is 8 files, ~57 MB, within
# what a call returns (8 files, 64 MiB); needed to score candidates that the run did not see out of fold.
if [ "${FOLD_WEIGHTS:-0}" = 1 ]; then
  # '+' (in fold names such as tracon+culane) is a character the device tool does not bring back: '_' instead;
  # rename them back before use (for f in TAG-*_*-seed0.pt ...).
  for f in "$RUN"/*-seed0.pt; do b=$(basename "$f"); cp "$f" "$OUT/$TAG-${b//+/_}"; done
fi
