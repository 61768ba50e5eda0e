#!/usr/bin/env bash
# Where default-gpu's object decision spends a batch on the GPU, step by step (issue 23): ONE short call on the
# device machine (about 3 minutes: two compiled treatments and the compiled network, 224 and 640 px, batch 1024),
# from the repo root, after `bash benchmarks/prepare_gpu_carry.sh` here (wheels into .whl/; the dev split is not
# needed, the inputs are synthesised from samples/):
#   run(command="bash benchmarks/gpu_profile.sh", carry=[".whl"], timeout_s=300)
# Results in $OUT: gpu_stage_profile.md (the table; see benchmarks/gpu_stage_profile.py), its log and env.txt.
set -o pipefail
export PYTHONUNBUFFERED=1
source benchmarks/gpu_env.sh  # $OUT, env.txt, the carried wheels, PYTHONPATH
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.cuda.is_available())' 2>&1 | tee -a "$OUT/env.txt"
# --seconds: no step starts after 150 s; the timeout is the backstop.
timeout 240 python3 benchmarks/gpu_stage_profile.py --device cuda --size 224 --size 640 --batch 1024 --repeats 5 \
  --seconds 150 --out "$OUT/gpu_stage_profile.md" 2>&1 | tee "$OUT/gpu_stage_profile_log.txt" | grep -v '^|'
cat "$OUT/gpu_stage_profile.md"
