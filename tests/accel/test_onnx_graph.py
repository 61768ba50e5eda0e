"""ONNX graphs run as torch modules: the same outputs as onnxruntime, from the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from workzone.accel.onnx_graph import load_onnx_module  # noqa: E402
from workzone.accel.runner import TorchModelRunner  # noqa: E402
from workzone.errors import ModelFileError  # noqa: E402
from workzone_train.export import store_weights_fp16  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "src" / "workzone" / "models"


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class _Tiny(torch.nn.Module):
    """Operators the shipped graphs do not all use: asymmetric pads, batch norm, pooling, upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8 * 16 * 8, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = torch.nn.functional.pad(x, (0, 1, 0, 1))
        x = torch.nn.functional.hardswish(self.bn(self.conv(x)))
        x = torch.nn.functional.max_pool2d(self.dw(x), 3, stride=2, padding=1)
        x = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        x = torch.clamp(x[:, :, :, :8].flip(3), -3, 3)
        return torch.sigmoid(self.fc(torch.flatten(x, 1)))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = _Tiny().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(model, (torch.rand(2, 3, 32, 32),), str(path), input_names=["image"], output_names=["out"],
                      dynamic_axes={"image": {0: "N"}, "out": {0: "N"}}, opset_version=17, dynamo=False)
    return path


@pytest.mark.parametrize("batch", [1, 5])
def test_a_generic_graph_matches_onnxruntime(tiny_onnx, batch):
    x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        got = load_onnx_module(tiny_onnx)(torch.from_numpy(x))["out"].numpy()
    np.testing.assert_allclose(got, _ort(tiny_onnx, x), atol=1e-5)


def test_weights_stored_fp16_are_read_as_the_graph_casts_them(tiny_onnx, tmp_path):
    half = store_weights_fp16(tiny_onnx, tmp_path / "half.onnx", min_elements=4)
    x = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        got = load_onnx_module(half)(torch.from_numpy(x))["out"].numpy()
    np.testing.assert_allclose(got, _ort(half, x), atol=1e-5)


@pytest.mark.parametrize("name,size,channel_tol", [("roadwork_lite0", 224, None), ("cone_detector", 448, 4)])
def test_the_shipped_models_match_onnxruntime_within_0_02(name, size, channel_tol):
    path = MODELS / f"{name}.onnx"
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    runner = TorchModelRunner(path, device="cpu", precision="float32")
    got = runner(torch.from_numpy(x))[runner.output_names[0]].numpy()
    ref = _ort(path, x)
    assert got.shape == ref.shape
    if channel_tol is None:
        assert np.abs(got - ref).max() <= 0.02
    else:
        # Detector: probabilities and offsets within 0.02; box sizes (pixels) within 0.02 relative.
        assert np.abs(got[:, :channel_tol] - ref[:, :channel_tol]).max() <= 0.02
        rel = np.abs(got[:, channel_tol:] - ref[:, channel_tol:]) / np.maximum(1.0, np.abs(ref[:, channel_tol:]))
        assert rel.max() <= 0.02


def test_bf16_stays_close_on_the_classifier():
    path = MODELS / "roadwork_lite0.onnx"
    x = torch.from_numpy(np.random.default_rng(2).random((4, 3, 224, 224), dtype=np.float32))
    fp32 = TorchModelRunner(path, precision="float32")(x)["logit"]
    bf16 = TorchModelRunner(path, precision="bfloat16")(x)["logit"]
    assert bf16.dtype == torch.float32
    assert (fp32 - bf16).abs().max().item() < 0.5


def test_an_unsupported_operator_is_named(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Einsum", ["image", "image"], ["out"], equation="ij,ij->i")], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    path = tmp_path / "einsum.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ModelFileError, match="Einsum"):
        load_onnx_module(path)


def test_a_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_onnx_module(tmp_path / "nope.onnx")


def test_compile_pads_batches_to_buckets_and_returns_n_rows(tiny_onnx):
    runner = TorchModelRunner(tiny_onnx, compile=False, max_batch=4)
    x = torch.rand(6, 3, 32, 32)
    assert runner(x)["out"].shape == (6, 2)


def test_padded_batches_meet_only_the_warmed_buckets(tiny_onnx):
    """Padded (compiled, or on CUDA), every batch of 1 to 64 rows runs on a bucket that warm_sizes(64) ran;
    each shape's first run is counted (a server charges nobody for it)."""
    runner = TorchModelRunner(tiny_onnx, max_batch=64, pad=True)
    sizes = runner.warm_sizes(64)
    assert sizes == [1, 2, 4, 8, 16, 32, 64]  # on the CPU a lone image is not padded to eight
    for n in sizes:
        runner(torch.rand(n, 3, 32, 32))
    assert runner.cold_runs == len(sizes)
    for n in range(1, 65):
        assert runner(torch.rand(n, 3, 32, 32))["out"].shape == (n, 2)
    assert runner.cold_runs == len(sizes)
    assert runner.warm_sizes(12) == [1, 2, 4, 8, 16]


def test_eager_on_the_cpu_pads_nothing_and_counts_each_new_size(tiny_onnx):
    """Every padded row costs a row's compute on the CPU: eager there runs the batch as it is, so warming
    every size is not offered (64 batches); each new size's first run is counted."""
    runner = TorchModelRunner(tiny_onnx, max_batch=64)
    assert not runner.pads and runner.warm_sizes(64) == []
    for n in (3, 3, 5):
        runner(torch.rand(n, 3, 32, 32))
    assert runner.cold_runs == 2
    assert TorchModelRunner(tiny_onnx, max_batch=64, compile=True).pads
