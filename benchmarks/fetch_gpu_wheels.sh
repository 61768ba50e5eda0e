#!/usr/bin/env bash
# Wheels the GPU machine lacks (its image has torch, torchvision, onnx, onnxruntime, numpy, Pillow, PyYAML,
# typer, rich, httpx, opencv but not pydantic, FastAPI/uvicorn or rapidocr). Run here, in the repo root;
# then name `.whl` in the device call's `carry` (it is git-ignored). About 21 MB, cp312 manylinux x86_64.
set -euo pipefail
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34 pydantic-settings==2.16.3 \
  python-dotenv==1.2.4 rapidocr-onnxruntime==1.4.4 pyclipper==1.4.0 shapely==2.2.0
ls .whl
