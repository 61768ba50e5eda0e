"""Training-loop, metrics and ONNX export tests (CPU, tiny random models)."""

from pathlib import Path

import numpy as np
import pytest

from workzone_train.loop import binary_metrics

from tests.training._data import add_cone_photos, write_manifest


@pytest.mark.parametrize(
    ("labels", "scores", "mcc", "recall", "spec"),
    [([1, 0, 1, 0], [1, -1, 1, -1], 1.0, 1.0, 1.0), ([1, 0, 1, 0], [-1, 1, -1, 1], -1.0, 0.0, 0.0),
     ([1, 1, 0, 0], [1, -1, -1, -1], 1 / np.sqrt(3), 0.5, 1.0)],
)
def test_binary_metrics(labels: list, scores: list, mcc: float, recall: float, spec: float) -> None:
    m = binary_metrics(labels, scores)
    assert m["mcc"] == pytest.approx(mcc)
    assert m["recall"] == pytest.approx(recall)
    assert m["specificity"] == pytest.approx(spec)


def _write_dataset(root: Path) -> Path:
    rows: list[str] = []
    boxes: list[str] = []
    add_cone_photos(root, rows, boxes, 8, source=lambda label: "TraCon" if label else "CamVid")
    return write_manifest(root, rows, boxes)


def test_train_one_step_on_cpu_and_export_parity(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("onnxruntime")
    from workzone_train.data import load_samples
    from workzone_train.export import check_parity, export_onnx, onnx_logits
    from workzone_train.loop import predict_logits, prepare_data, recipe_from_name, train_model
    from workzone_train.model import build_model

    manifest = _write_dataset(tmp_path)
    samples = load_samples(manifest, splits=("train",))
    data = prepare_data(samples, manifest.parent / "boxes.csv")
    recipe = recipe_from_name("partial", epochs=1, epoch_size=8, batch_size=4, size=64)
    torch.manual_seed(0)
    # A random-init model keeps the test offline and fast; the loop itself is the real one.
    import workzone_train.model as model_mod

    orig = model_mod.build_model
    model_mod.build_model = lambda arch, **kw: orig(arch, pretrained=False, dropout=kw.get("dropout", 0.3))
    try:
        before = {k: v.clone() for k, v in build_model(pretrained=False).state_dict().items()}
        model = train_model(data, recipe, device="cpu", workers=0)
    finally:
        model_mod.build_model = orig
    assert not model.training
    assert before.keys() == model.state_dict().keys()
    logits = predict_logits(model, data.pixels, size=64)
    assert logits.shape == (8,) and np.isfinite(logits).all()

    path = export_onnx(model, tmp_path / "m.onnx", size=64)
    assert check_parity(model, path, data.pixels[:3], size=64, mode="squash") < 1e-4
    got = onnx_logits(path, data.pixels, size=64, mode="squash", batch_size=3)  # dynamic batch: 3, 3, 2
    assert got.shape == (8,)
    assert np.allclose(got, logits, atol=1e-4)


def test_onnx_contract_names_and_dynamic_batch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    ort = pytest.importorskip("onnxruntime")
    from workzone_train.export import export_onnx
    from workzone_train.model import build_model

    path = export_onnx(build_model(pretrained=False), tmp_path / "m.onnx", size=32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert out.name == "logit"
    for n in (1, 5):
        y = sess.run(["logit"], {"image": np.random.rand(n, 3, 32, 32).astype(np.float32)})[0]
        assert y.shape in ((n,), (n, 1))


def test_the_detector_export_check_is_relative_on_box_sizes() -> None:
    from workzone_train.detector_loop import export_error

    # 0.03 px on a 300-px box (float32 rounding in a longer-trained model) is no disagreement; 0.02 on a probability is.
    assert export_error(np.array([[0.5, 300.0]]), np.array([[0.5, 300.03]])) < 1e-3
    assert export_error(np.array([0.52, 300.0]), np.array([0.5, 300.0])) == pytest.approx(0.02)
