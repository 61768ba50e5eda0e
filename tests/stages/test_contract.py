"""Contract shared by the detector and transformers stage kinds (issue 4's heavy tiers).

Every kind: rejects unknown params with a message naming the key, and after load() returns one
output per image whose log-odds is finite or None. Each kind runs on its tiny test model; kinds
whose library cannot run here (ultralytics / rfdetr without torchvision) are skipped.
"""

from __future__ import annotations

import asyncio
import importlib
import math

import numpy as np
import pytest

from workzone.errors import ConfigError
from workzone.stages.registry import create_stage, get_stage_class, list_stages
from workzone.types import Image, StageOutput

KINDS = ["onnx_detector", "ultralytics", "rfdetr", "hf_zero_shot_detection", "hf_image_classification",
         "hf_zero_shot_image", "hf_depth", "hf_segmentation", "hf_clip_anomaly"]
IMAGES = [Image(np.zeros((48, 64, 3), np.uint8)),
          Image(np.random.default_rng(5).integers(0, 255, (70, 40, 3), dtype=np.uint8)),
          Image(np.full((32, 32, 3), 250, np.uint8))]


def _importable(*modules: str) -> bool:
    try:
        for m in modules:
            importlib.import_module(m)
    except Exception:  # noqa: BLE001 - any import failure means the backend cannot run here
        return False
    return True


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny models on demand, built once per module."""
    root = tmp_path_factory.mktemp("contract")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            from tests.stages import _tiny_hf
            from tests.stages.test_onnx_detector import _yolov8_onnx

            if name == "onnx":
                _yolov8_onnx(root / "tiny.onnx")
                cache[name] = root / "tiny.onnx"
            else:
                builder = {"vit": lambda p: _tiny_hf.save_vit_classifier(p, ["none", "roadwork"]),
                           "clip": _tiny_hf.save_clip, "owl": _tiny_hf.save_owlv2,
                           "depth": _tiny_hf.save_depth_anything, "sam": _tiny_hf.save_sam}[name]
                cache[name] = builder(root / name)
        return cache[name]
    return get


def _params(kind: str, tiny) -> dict:
    hf = ("transformers", "torch")
    needs = {"ultralytics": ("torchvision", "ultralytics"), "rfdetr": ("torchvision", "rfdetr"),
             "hf_zero_shot_detection": hf, "hf_image_classification": hf, "hf_zero_shot_image": hf,
             "hf_depth": hf, "hf_segmentation": hf, "hf_clip_anomaly": hf, "onnx_detector": ("onnx",)}[kind]
    if not _importable(*needs):
        pytest.skip(f"{kind}: {', '.join(needs)} cannot be imported here")
    if kind == "onnx_detector":
        return {"model": str(tiny("onnx")), "format": "yolov8"}
    if kind == "ultralytics":
        return {"model": "yolo11n.yaml", "imgsz": 64, "conf": 0.0}
    if kind == "rfdetr":
        return {"model": None, "variant": "nano", "threshold": 0.0}
    if kind == "hf_zero_shot_detection":
        return {"model": str(tiny("owl")), "prompts": {"a traffic cone": "cone"}, "threshold": 0.3}
    if kind == "hf_image_classification":
        return {"model": str(tiny("vit")), "positive_labels": ["roadwork"]}
    if kind == "hf_zero_shot_image":
        return {"model": str(tiny("clip")), "positive_prompts": ["road work"], "negative_prompts": ["an empty street"]}
    if kind == "hf_clip_anomaly":
        return {"model": str(tiny("clip")), "normal_prompts": ["an empty street"], "abnormal_prompts": ["a traffic cone"]}
    detector = {"kind": "onnx_detector", "model": str(tiny("onnx")), "format": "yolov8", "conf": 0.3}
    return {"model": str(tiny("sam" if kind == "hf_segmentation" else "depth")), "detector": detector}


def test_kinds_are_registered_builtins():
    assert set(KINDS) <= set(list_stages())


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_param_is_rejected_by_name(kind):
    with pytest.raises(ConfigError) as err:
        create_stage(kind, "s", {"model": "m", "definitely_not_a_param": 1})
    assert "definitely_not_a_param" in str(err.value) and "unknown key" in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_params_are_frozen(kind):
    fields = get_stage_class(kind).Params.model_fields
    assert "model" in fields and get_stage_class(kind).Params.model_config.get("frozen") is True


@pytest.mark.parametrize("kind", KINDS)
def test_predict_returns_one_finite_output_per_image(kind, tiny):
    stage = create_stage(kind, "s", _params(kind, tiny))

    async def go():
        await stage.load()
        try:
            return await stage.predict(IMAGES), await stage.predict([])
        finally:
            await stage.aclose()
            await stage.aclose()  # safe twice

    outs, empty = asyncio.run(go())
    assert len(outs) == len(IMAGES) and empty == []
    for out in outs:
        assert isinstance(out, StageOutput)
        assert out.log_odds is None or math.isfinite(out.log_odds)


def test_importing_the_stage_modules_pulls_in_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys\n"
            "import workzone.stages.yolo, workzone.stages.rfdetr, workzone.stages.open_vocab, "
            "workzone.stages.hf_classifier, workzone.stages.zero_shot_image, workzone.stages.depth, "
            "workzone.stages.onnx_detector, workzone.stages.segmentation, workzone.stages.clip_anomaly, "
            "workzone.stages.anomaly, workzone.routing, workzone.engine_options\n"
            "print(sorted(m for m in ('torch', 'transformers', 'ultralytics', 'rfdetr', 'onnxruntime', 'torchvision') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
