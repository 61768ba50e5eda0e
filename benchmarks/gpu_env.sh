# Sourced (not run) by the GPU scripts (gpu_bench.sh, gpu_profile.sh) from the repo root on the device machine:
# records the machine in $OUT/env.txt, installs the carried wheels (.whl/, made here by prepare_gpu_carry.sh) into
# /tmp/site without touching the machine's own torch, and points PYTHONPATH at them and at src/.
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; python3 --version; } \
  2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  2>&1 | tee -a "$OUT/env.txt"
export PYTHONPATH=/tmp/site:$PWD/src
