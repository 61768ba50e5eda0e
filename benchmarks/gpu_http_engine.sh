#!/usr/bin/env bash
# HTTP on the GPU machine with the cascade in the server's process and in an engine process (issue 23, item 3):
# ONE device call, after `bash benchmarks/prepare_gpu_carry.sh` here:
#   run(command="bash benchmarks/gpu_http_engine.sh", carry=[".whl"], timeout_s=560)
# Three servers of default-gpu, one after the other, each timed at 1,000 and 3,000 requests/s from 64 loopback
# addresses (load from 4 client processes) and searched for the highest rate held with p99 <= 100 ms: four HTTP processes in front of one engine
# process (--http-workers 4, two batch workers each), one HTTP process with an engine process (two batch workers: a
# batch formed while the engine runs the last one; the engine merges what waits), and the cascade in the server's
# process (the baseline, as bench_gpu_http.md). Results: $OUT/http_engine_{workers4,inproc,w2}.md.
set -o pipefail
export PYTHONUNBUFFERED=1
source benchmarks/gpu_env.sh
python3 -c 'import fastapi, uvicorn, aiohttp, torch; print("cuda", torch.cuda.is_available())' 2>&1 | tee -a "$OUT/env.txt"
bench() {  # name, seconds, then env assignments
  local name=$1 limit=$2; shift 2
  env "$@" timeout -s INT -k 15 "$limit" python3 -m workzone.cli.main bench --device cuda --size 224 --images 512 \
    --seconds 2 --batch 1024 --cascade-batch 1024 -p default-gpu --no-tier1 --no-all-tiers --no-compile --cpu-share 0 \
    --http-rate 1000 --http-rate 3000 --http-seconds 8 --http-p99-ms 100 --http-addresses 64 --http-clients 4 \
    --out "$OUT/http_engine_$name.md" --http-server-log "/tmp/log_$name.txt" 2>&1 | tail -n 30 > "$OUT/log_$name.txt"
  # What the servers and the engine logged besides their refusals (the engine says when batches waited for it).
  { echo "--- server log without refusals:"; grep -Ev 'refused [0-9]{3} ' "/tmp/log_$name.txt" | tail -n 150; } \
    >> "$OUT/log_$name.txt"
  grep -h "HTTP" "$OUT/http_engine_$name.md" | cut -c1-260
}
# VARIANTS picks and orders them (default: all three).
for v in ${VARIANTS:-workers4 inproc w2}; do
  case $v in
    workers4) bench workers4 175 WORKZONE_HTTP_WORKERS=4 WORKZONE_BATCH_WORKERS=2 ;;
    inproc) bench inproc 185 WORKZONE_ENGINE_PROCESS=0 ;;
    w2) bench w2 165 WORKZONE_ENGINE_PROCESS=1 WORKZONE_BATCH_WORKERS=2 ;;
  esac
done
cd "$OUT" && tar -czf logs.tar.gz log_*.txt env.txt && rm -f log_*.txt
