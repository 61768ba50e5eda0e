#!/usr/bin/env bash
# What the GPU machine needs beside the repository, put in two git-ignored folders that the device call carries:
#   .whl/  wheels its image lacks (cp312 manylinux x86_64): pydantic, FastAPI (which imports opentelemetry at
#          import time: without opentelemetry-api `import fastapi` fails, which lost the HTTP rows of two runs),
#          starlette, uvicorn, pydantic-settings and the versions of anyio/h11/annotated-doc they need. No rapidocr:
#          the GPU bench runs default-gpu (no OCR tier).
#   .gpu/roadwork-v1/  the dev split of ../shared/data/roadwork-v1 (469 JPEGs, manifest of those rows), read by the
#          parity test and bench (../shared does not travel).
# Run here, in the repository root; then: run(command="bash benchmarks/gpu_bench.sh", carry=[".whl", ".gpu/roadwork-v1"]).
set -euo pipefail
DATA=${1:-../shared/data/roadwork-v1}
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 python-multipart==0.0.34 pydantic-settings==2.16.3 \
  python-dotenv==1.2.4 annotated-doc==0.0.7 anyio==4.16.0 h11==0.16.0 opentelemetry-api==1.45.2 \
  2>&1 | grep -v "^WARNING: Location" || true
# Only the dev split is replaced: .gpu/ also holds the verifier's crop pack (lab/scripts/gpu_verifier_loso.sh).
rm -rf .gpu/roadwork-v1 && mkdir -p .gpu/roadwork-v1
python3 - "$DATA" .gpu/roadwork-v1 <<'EOF'
import csv, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
with (src / "manifest.csv").open(newline="", encoding="utf-8") as fh:
    reader = csv.DictReader(fh)
    rows = [r for r in reader if r["split"] == "dev"]
    fields = reader.fieldnames
for r in rows:
    (dst / r["path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / r["path"], dst / r["path"])
with (dst / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
    w = csv.DictWriter(fh, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
print(f"{len(rows)} dev images copied to {dst}")
EOF
{ git check-ignore -q .whl && git check-ignore -q .gpu; } || { echo "error: .whl/ and .gpu/ must be git-ignored (see .gitignore)"; exit 1; }
du -sh .whl .gpu/roadwork-v1
# The call sends tracked + untracked-not-ignored files + the carried folders: at most 64 MiB in all.
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb .whl .gpu/roadwork-v1 | awk '{s += $1} END {print s}')
total=$(( tracked + ${untracked:-0} + carried ))
echo "the call would send about $(( total / 1048576 )) MiB (limit 64)"
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "error: over 64 MiB"; exit 1; }
