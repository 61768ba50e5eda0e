#!/usr/bin/env bash
# The GPU acceptance run of issue 15, one call on the device machine (about 4-5 minutes), from the repo root:
#   run(command="bash benchmarks/gpu_bench.sh", carry=[".whl"], timeout_s=420)
# after benchmarks/fetch_gpu_wheels.sh has filled .whl here. Results: $OUT/bench_gpu.md, .json and the log.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:src || exit 1
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, torch.cuda.get_device_name())'
# 224 px (the subnet's input) and native 640 px; tier 1 alone (nvJPEG, and 30 % of JPEGs on CPU threads beside it),
# default-gpu (tier 2 on the GPU) with the every-tier run for the estimate, the default (sign OCR on the CPU), the
# network alone, and HTTP /v1/detect at 1,000 requests/s on loopback.
timeout 330 python3 -m workzone.cli.main bench --device cuda --size 224 --size 640 --images 1024 --seconds 3 \
  --batch 1024 --cascade-batch 1024 -p default-gpu -p default --cpu-share 0 --cpu-share 0.3 \
  --http-rate 1000 --http-seconds 10 --out "$OUT/bench_gpu.md" 2>&1 | tee "$OUT/bench_gpu_log.txt"
