#!/usr/bin/env bash
# The GPU acceptance run of issue 23: ONE call on the device machine (about 6-8 minutes), from the repo root,
# after `bash benchmarks/prepare_gpu_carry.sh` here (wheels into .whl/, the dev split into .gpu/):
#   run(command="bash benchmarks/gpu_bench.sh", carry=[".whl", ".gpu/roadwork-v1"], timeout_s=560)
# 1. the CUDA tests (tests/accel/test_object_path.py, test_crops.py): parity on the 469 dev images with JPEGs decoded
# by libjpeg on CPU threads, the service's batch decode, and the verifier's crops on CUDA against Pillow's; 2. workzone bench: parity rows with nvJPEG and with libjpeg
# decode, decode alone (nvJPEG; libjpeg threads), HTTP /v1/detect at 1,000 and 3,000 requests/s over loopback and
# the highest rate with p99 <= 100 ms, default-gpu from JPEG bytes at 224 and 640 px (batch 1024), and beside it
# the baseline benchmarks/pipelines/objects-only-gpu.yaml (the detector's decision alone, default-gpu before its
# verifier tier); libjpeg decode is timed by the parity test (the rows at 765 and 328 images/s of 2026-12-07 14:18); 3. if 50 s are left of 520, HTTP at 1,000 requests/s again with the costly lane off (one lane for all clients:
# http_one_lane.md), the control for the costly lane. Results in $OUT: bench_gpu.md, bench_gpu.json, the logs,
# http_server_log.txt (what the HTTP rows' server logged besides its refusals: lane changes, batches beside a first
# run of a shape, errors), served_cost_cuda.md (per-step ms per image, served against in process, if time is left)
# and env.txt (what was installed); then http_switch_5ms.md and http_switch_0.1ms.md (1,000 requests/s at those GIL
# switch intervals). All but bench_gpu.md and .json come back in extra.tar.gz (the tool returns at most 8 files).
set -o pipefail
export PYTHONUNBUFFERED=1
START=$(date +%s)
source benchmarks/gpu_env.sh  # $OUT, env.txt, the carried wheels, PYTHONPATH
# Fail here, loudly, if the service's imports are broken (the cause, not a later "not installed").
python3 -c 'import fastapi, uvicorn, pydantic, pydantic_settings, multipart, torch, torchvision, onnxruntime, aiohttp
print("fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "pydantic", pydantic.VERSION, "torch",
      torch.__version__, "torchvision", torchvision.__version__, "onnxruntime", onnxruntime.__version__,
      "cuda", torch.cuda.is_available())' 2>&1 | tee -a "$OUT/env.txt" || echo "IMPORT CHECK FAILED" | tee -a "$OUT/env.txt"
python3 -m workzone.cli.main serve --help >/dev/null 2>&1 && echo "workzone CLI ok" | tee -a "$OUT/env.txt"
ls .gpu/roadwork-v1/manifest.csv >/dev/null 2>&1 || echo "NO DEV IMAGES: run benchmarks/prepare_gpu_carry.sh" | tee -a "$OUT/env.txt"

timeout 150 python3 -m pytest -q -p no:cacheprovider -s -rA tests/accel/test_object_path.py tests/accel/test_crops.py \
  -k "libjpeg or gpu_service or pillow_cuts" \
  2>&1 | tee "$OUT/parity_test_log.txt"
echo "parity test done after $(( $(date +%s) - START )) s"

# The HTTP rows' load comes from 64 loopback addresses (many clients); one client alone, and the recovery after
# an overload: python3 benchmarks/http_overload.py --device cuda --pipeline default-gpu --batch-size 64 \
#   --batch-wait-ms 2 --queue-size 6000 --addresses 1 --addresses 64 --rate 300 --rate 3000 --rate 300 --seconds 8
# Left for the bench: what remains of about 8.5 minutes (the call's limit is 10).
LEFT=$(( 510 - ($(date +%s) - START) ))
timeout "$LEFT" python3 -m workzone.cli.main bench --device cuda --size 224 --size 640 --images 1024 --seconds 3 \
  --batch 1024 --cascade-batch 1024 -p default-gpu -p benchmarks/pipelines/objects-only-gpu.yaml --no-tier1 \
  --no-all-tiers --parity-data .gpu/roadwork-v1 --cpu-share 0 \
  --http-rate 1000 --http-rate 3000 --http-seconds 8 --http-p99-ms 100 --http-addresses 64 --out "$OUT/bench_gpu.md" \
  --http-server-log /tmp/http_server_log.txt 2>&1 | tee "$OUT/bench_gpu_log.txt"
# The refusals are counted in the rows; the rest of the server's log says why a row went wrong.
{ grep -Ev 'refused [0-9]{3} [a-z_]+ client=' /tmp/http_server_log.txt | tail -n 400; echo "--- last lines, refusals included:";
  tail -n 40 /tmp/http_server_log.txt; } > "$OUT/http_server_log.txt" 2>&1
echo "bench done after $(( $(date +%s) - START )) s"

# Where a served image's time goes on the device, against the in-process batch (per step, torch operators per
# batch; issue 23 item 3), if 100 s are left of 520 (the one-lane control below keeps its 50).
LEFT=$(( 520 - ($(date +%s) - START) ))
if [ "$LEFT" -ge 100 ]; then
  timeout 45 python3 benchmarks/served_cost.py --device cuda --repeats 3 > "$OUT/served_cost_cuda.md" 2>&1
  tail -n 8 "$OUT/served_cost_cuda.md"
fi

# Interrupted (not killed) at the limit, so that it stops its server.
LEFT=$(( 520 - ($(date +%s) - START) ))
if [ "$LEFT" -ge 50 ]; then
  WORKZONE_COSTLY_IMAGE_S=0 timeout -s INT -k 15 "$LEFT" python3 benchmarks/http_overload.py --device cuda --pipeline default-gpu \
    --batch-size 64 --batch-wait-ms 2 --queue-size 6000 --addresses 64 --rate 1000 --seconds 8 \
    --out "$OUT/http_one_lane.md" 2>&1 | tail -n 5 | tee "$OUT/http_one_lane_log.txt"
fi
# The GIL switch interval the server sets on CUDA (0.5 ms by default; served_gap_cuda.md): 1,000 requests/s again at
# Python's 5 ms (the control) and at 0.1 ms, while time is left.
for MS in 5 0.1; do
  LEFT=$(( 560 - ($(date +%s) - START) ))
  if [ "$LEFT" -ge 45 ]; then
    WORKZONE_GIL_SWITCH_MS=$MS timeout -s INT -k 10 "$LEFT" python3 benchmarks/http_overload.py --device cuda \
      --pipeline default-gpu --batch-size 64 --batch-wait-ms 2 --queue-size 6000 --addresses 64 --rate 1000 \
      --seconds 8 --out "$OUT/http_switch_${MS}ms.md" 2>&1 | tail -n 3
  fi
done
# The device tool brings back at most 8 files: on its machine ($OUT set by it), everything but the bench's own two
# and the caller's *-log.txt goes into one archive.
if [ "$OUT" != benchmarks/results ]; then
  ( cd "$OUT" && EXTRA=$(ls | grep -v -e '^bench_gpu\.md$' -e '^bench_gpu\.json$' -e '-log\.txt$') \
    && tar -czf extra.tar.gz --remove-files $EXTRA )
fi
echo "done after $(( $(date +%s) - START )) s"
