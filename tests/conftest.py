"""Shared fixtures: tiny images, a tiny real ONNX classifier, simple real stages, the dataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "roadwork-v1"


def build_tiny_classifier(path: Path, size: int = 32, weights=(4.0, 0.0, -4.0), bias: float = 0.0,
                          resize: str = "squash") -> Path:
    """A real ONNX model honouring the classifier contract: input `image` [N,3,S,S], output `logit` [N].

    logit = bias + sum_c weights[c] * mean(channel c): red images score high, blue ones low.
    """
    import json

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], list(map(float, weights)))
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [float(bias)])
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [-1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["logit"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])],
        initializer=[w, b, shape, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    path.with_suffix(".json").write_text(json.dumps({"input_size": size, "resize": resize}))
    return path


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return build_tiny_classifier(tmp_path / "tiny.onnx")


def solid(rgb, size=(48, 40)) -> np.ndarray:
    return np.full((size[1], size[0], 3), rgb, dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


# Where benchmarks/prepare_gpu_carry.sh copies the dev split, to travel with the repository to a GPU machine.
CARRIED_DATA = REPO / ".gpu" / "roadwork-v1"


@pytest.fixture
def roadwork_data() -> Path:
    for root in (DATA, CARRIED_DATA):
        if (root / "manifest.csv").is_file():
            return root
    pytest.skip("../shared/data/roadwork-v1 is not beside the repository (nor copied to .gpu/roadwork-v1)")
