"""The compiled as-trained treatment and letterbox (DeviceObjectDetector with compile_treatment) against eager."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from workzone.accel.objects import (DeviceObjectDetector, _graphs_compiled, _treatment_matrices,  # noqa: E402
                                    treat_for_detector)
from workzone.stages._torch_backend import TorchBackendParams  # noqa: E402
from workzone.stages.base import StageContext  # noqa: E402
from workzone.stages.roadwork_detector import ObjectDetectorRunner  # noqa: E402


@pytest.fixture(scope="module")
def eager() -> DeviceObjectDetector:
    model = StageContext().resolve("builtin:roadwork_objects.onnx")
    return ObjectDetectorRunner(model, torch_params=TorchBackendParams(backend="torch"), device="cpu").device_path


def _like(det: DeviceObjectDetector, **kw) -> DeviceObjectDetector:
    return DeviceObjectDetector(det.runner, size=det.size, stride=det.stride, num_classes=det.num_classes,
                                source_max_side=det.source_max_side, source_jpeg_quality=det.source_jpeg_quality,
                                decision=det.decision, **kw)


def _images(h: int, w: int, n: int = 2, seed: int = 0) -> "torch.Tensor":
    g = torch.Generator().manual_seed(seed + h * 1000 + w)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def test_the_cpu_path_stays_eager_unless_asked(eager):
    assert eager.runner.compiled is False and eager.compile_treatment is False
    assert _like(eager, compile_treatment=True).compile_treatment is True


# Odd sides (every crop and pad of the JPEG round trip), the subnet's 224 px (no shrink), and larger than the
# detector's source_max_side both ways (the Lanczos shrink runs).
@pytest.mark.parametrize("h, w", [(37, 53), (224, 224), (330, 500), (500, 330)])
def test_the_treatment_through_matrices_equals_the_eager_steps(eager, h, w):
    x = _images(h, w)
    mats = _treatment_matrices(h, w, eager.source_max_side, eager.size, "cpu")
    want = eager.treated(x)
    assert torch.equal(treat_for_detector(x, *mats, eager.source_jpeg_quality), want)
    assert want.shape == (2, 3, eager.size, eager.size)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU (inductor) needs a C++ compiler")
def test_the_compiled_treatment_gives_the_eager_pixels_exactly(eager):
    # Compiling costs about 30 s a graph on a 2-core CPU: two graphs here (without and with the shrink), images
    # of sizes in one size class sharing the first.
    det = _like(eager, compile_treatment=True)
    cold, compiled = [], []
    for h, w in [(37, 53), (45, 61), (330, 500)]:
        x = _images(h, w, n=3)
        before, graphs = det.runner.cold_runs, _graphs_compiled()
        got = det.treated(x)
        cold.append(det.runner.cold_runs - before)
        compiled.append(int(_graphs_compiled() != graphs))
        assert det.notes == [], det.notes  # compiled, not fallen back to eager
        assert torch.equal(got, eager.treated(x)), (h, w, float((got - eager.treated(x)).abs().max()))
    # A compile is a cold run (a server charges it to no client); a size in a class already compiled is not. (The
    # other sizes' graphs may have been compiled by an earlier test of this process: dynamo's cache is per function.)
    assert cold == compiled and cold[1] == 0
    # and through inputs(): two sizes in one batch, interleaved (the index_copy path)
    a, b = _images(37, 53, n=2, seed=1), _images(45, 61, n=2, seed=1)
    tensors = [a[0], b[0], a[1], b[1]]
    assert torch.equal(det.inputs(tensors), eager.inputs(tensors))


def test_the_static_compile_is_asked_for_by_shape_and_keeps_the_eager_pixels(eager, monkeypatch):
    asked = []
    real = torch.compile

    def spy(fn, **kw):
        asked.append(kw.get("dynamic"))
        return real(fn, **kw) if shutil.which("g++") or shutil.which("c++") else fn

    monkeypatch.setattr(torch, "compile", spy)
    det = _like(eager, compile_treatment=True, treatment_dynamic=False)
    x = _images(224, 224)
    assert torch.equal(det.treated(x), eager.treated(x))
    assert asked == [False] and det.notes == []


def test_a_treatment_that_fails_to_compile_falls_back_to_eager_and_says_so(eager, monkeypatch):
    det = _like(eager, compile_treatment=True)

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    x = _images(37, 53)
    assert torch.equal(det.treated(x), eager.treated(x))
    assert det.compile_treatment is False and "no compiler here" in det.notes[0]


def test_inputs_of_one_size_and_of_many_match_image_by_image(eager):
    # the whole-batch return, the slice copy and the index copy give each image's own treatment
    det = _like(eager, chunk=2)
    a, b = _images(37, 53, n=3, seed=2), _images(64, 48, n=2, seed=2)
    one = [a[0], a[1], a[2]]
    mixed = [a[0], b[0], a[1], a[2], b[1]]
    for tensors in (one, mixed):
        got = det.inputs(tensors)
        each = torch.cat([eager.inputs([t]) for t in tensors])
        assert torch.equal(got, each)
