"""The object decision on a torch device against the onnxruntime path, on real dev images.

The CPU test runs everywhere (CI has no GPU) on a spread of dev images; the CUDA test runs the
whole dev split from JPEG bytes through nvJPEG, as ``workzone serve --device cuda`` does.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from workzone.throughput.parity import dev_jpegs, object_parity  # noqa: E402
from workzone.object_evidence import ObjectDecision, object_features  # noqa: E402
from workzone.stages._torch_backend import TorchBackendParams  # noqa: E402
from workzone.stages.roadwork_detector import ObjectDetectorRunner  # noqa: E402
from workzone.stages.base import StageContext  # noqa: E402

MODEL = StageContext().resolve("builtin:roadwork_objects.onnx")


def _assert_parity(report, min_within: float) -> None:
    assert report.within >= min_within, report.describe()
    assert report.flips_outside == 0, report.describe()


def test_torch_path_on_cpu_matches_onnxruntime_on_dev_images(roadwork_data):
    report, p_ref, p_fast = object_parity(dev_jpegs(roadwork_data, limit=24), device="cpu")
    assert report.n == 24 and np.isfinite(p_fast).all()
    # Same pixels (Pillow-exact resampling and JPEG), fp32 on both sides: every image within 0.02.
    _assert_parity(report, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the GPU machine)")
@pytest.mark.parametrize("cpu_share", [0.0, 1.0], ids=["nvjpeg", "libjpeg"])
def test_torch_path_on_cuda_matches_onnxruntime_on_the_dev_split(roadwork_data, cpu_share):
    # nvjpeg: the fast decoder (its IDCT and chroma upsampling are not libjpeg's); libjpeg: the JPEGs decoded
    # on CPU threads, the same pixels as the reference, everything after on the GPU.
    items = dev_jpegs(roadwork_data)
    report, _, _ = object_parity(items, device="cuda", batch=256, cpu_share=cpu_share)
    print(f"GPU parity ({'nvJPEG' if cpu_share == 0 else 'libjpeg'} decode):", report.describe())
    assert report.n == len(items) == 469
    _assert_parity(report, 0.99)


def test_device_decision_equals_the_sidecar_decision_on_the_same_boxes(roadwork_data):
    # The tensor features and the numpy ones agree box for box (the decision block of the shipped sidecar).
    items = dev_jpegs(roadwork_data, limit=6)
    from workzone.io.images import decode_image

    runner = ObjectDetectorRunner(MODEL, torch_params=TorchBackendParams(backend="torch"), device="cpu")
    imgs = [decode_image(b, source=s) for s, b in items]
    dets, zs, why = runner.decide(imgs, score_threshold=0.01, max_detections=50)
    assert runner.decision is not None and zs is not None and why is not None
    for det, z, note, img in zip(dets, zs, why, imgs):
        assert z == pytest.approx(runner.decision.log_odds(det, float(img.height)), abs=1e-5)
        want = ", ".join(f"{n} {v:+.2f}" for n, v in runner.decision.contributions(det, float(img.height)))
        assert note == "decided by: " + want


def test_device_features_cover_every_class_column():
    # A decision over per-class columns too (not only the shipped three), on made-up boxes.
    names = ["cone", "drum", "worker"]
    from workzone.object_evidence import feature_names

    spec = {"version": 1, "features": feature_names(names), "bias": -0.5,
            "weights": list(np.linspace(-1, 1, len(feature_names(names))))}
    decision = ObjectDecision(spec, names)
    from workzone.accel.objects import DeviceObjectDetector

    from workzone.object_evidence import COUNT_AT, LOGIT_CLIP

    det = DeviceObjectDetector.__new__(DeviceObjectDetector)  # the decision alone: no runner needed
    det.decision, det.count_at, det.logit_clip = decision, COUNT_AT, LOGIT_CLIP
    rows = np.array([[10, 5, 30, 80, 0.9, 1], [0, 0, 4, 4, 0.35, 0], [1, 1, 2, 9, 0.2, 2], [0, 0, 1, 1, 0.0, 0]],
                    np.float32)
    boxes = torch.from_numpy(rows)[None]
    z, parts = det._decide(boxes, torch.tensor([3]), torch.tensor([100.0], dtype=torch.float64))
    assert parts.shape == (1, len(feature_names(names)))
    want = decision.bias + decision.weights @ object_features(rows[:3], len(names), 100.0)[decision.columns]
    assert float(z[0]) == pytest.approx(want, abs=1e-9)


def test_the_device_decision_dispatches_as_many_operators_for_any_class_count():
    # The per-class columns as one [N, D, K] reduction: a loop over the classes cost ~10 operators per class per
    # batch (kernel launches on a GPU, paid per batch, so per image by the small batches a server forms).
    from tests.accel.dispatch_count import counted_ops
    from workzone.accel.objects import DeviceObjectDetector
    from workzone.object_evidence import COUNT_AT, LOGIT_CLIP, feature_names

    counts, values = [], []
    for names in (["cone", "drum"], [f"c{k}" for k in range(12)]):
        spec = {"version": 1, "features": feature_names(names), "bias": 0.1,
                "weights": list(np.linspace(-1, 1, len(feature_names(names))))}
        det = DeviceObjectDetector.__new__(DeviceObjectDetector)
        det.decision, det.count_at, det.logit_clip = ObjectDecision(spec, names), COUNT_AT, LOGIT_CLIP
        rows = np.array([[10, 5, 30, 80, 0.9, 1], [0, 0, 4, 4, 0.35, 0], [1, 1, 2, 9, 0.2, 1]], np.float32)
        with counted_ops() as n:
            z, _ = det._decide(torch.from_numpy(rows)[None], torch.tensor([3]),
                               torch.tensor([100.0], dtype=torch.float64))
        counts.append(n[0])
        want = det.decision.bias + det.decision.weights @ object_features(rows, len(names), 100.0)[det.decision.columns]
        values.append(float(z[0]) - want)
    assert counts[0] == counts[1] and max(map(abs, values)) < 1e-9


def test_served_requests_share_one_batched_device_pass_and_its_operators(roadwork_data, monkeypatch):
    # What `workzone serve` does with default-gpu's detector on the torch path (here on the CPU): requests
    # decoded in the server's decoder processes, then batched; the batch goes through the same batched
    # as-trained treatment as the in-process path (one call for the batch, no per-image Pillow re-encode),
    # and the operators it dispatches do not grow with the batch (their count is the per-batch fixed cost).
    import asyncio

    from tests.accel.dispatch_count import counted_ops
    from workzone.accel.objects import DeviceObjectDetector
    from workzone.config.backend import with_backend
    from workzone.config.loader import load_pipeline_config
    from workzone.io.decode_pool import DecodePool
    from workzone.io.images import ImageLimits, decode_image
    from workzone.micro_batcher import BatchPolicy
    from workzone.service import DetectionService, ImageDecoder

    items = dev_jpegs(roadwork_data, limit=8)
    calls: list[int] = []
    real_inputs = DeviceObjectDetector.inputs
    monkeypatch.setattr(DeviceObjectDetector, "inputs", lambda self, t: calls.append(len(t)) or real_inputs(self, t))

    def per_image(*_a):
        raise AssertionError("the per-image Pillow treatment ran on the torch path")

    monkeypatch.setattr(ObjectDetectorRunner, "_as_trained", per_image)
    cfg, path = load_pipeline_config("default-gpu")

    async def run():
        limits = ImageLimits()
        svc = DetectionService.from_config(with_backend(cfg, "torch"), path.parent,
                                           policy=BatchPolicy(max_batch_size=8, max_wait_s=0.5),
                                           decoder=ImageDecoder("cpu", limits=limits, processes=DecodePool(2, limits)))
        await svc.start(serving=False)
        try:
            imgs = [await svc.decode(b, s) for s, b in items]
            calls.clear()
            served = await asyncio.gather(*(svc.detect_many([im], client=f"c{k}") for k, im in enumerate(imgs)))
            stage = svc.cascade.stages[0]
            ops = []
            for n in (1, 8):  # images of one size (the as-trained treatment runs once per distinct size)
                with counted_ops() as c:
                    stage._predict_sync([decode_image(items[0][1])] * n)
                ops.append(c[0])
            return [d[0] for d in served], await svc.run([decode_image(b, source=s) for s, b in items]), ops
        finally:
            await svc.aclose()

    served, in_process, ops = asyncio.run(run())
    assert calls[0] == 8  # the eight requests' images in one batched call
    assert [d.probability for d in served] == pytest.approx([d.probability for d in in_process], abs=1e-6)
    assert ops[0] == pytest.approx(ops[1], abs=20) and ops[1] < 900  # 1,370 before the plane and class loops went


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the GPU machine)")
def test_gpu_service_decodes_jpeg_batches_on_the_device(roadwork_data):
    import asyncio

    from workzone.accel.device_image import EncodedImage
    from workzone.service import DetectionService

    items = dev_jpegs(roadwork_data, limit=16)
    _, _, p_same = object_parity(items, device="cuda", cpu_share=0.0)  # the same path, nvJPEG decode too
    head = items[0][1]
    # The whole header (through start-of-scan), then garbage: accepted on its header, decoded with its batch.
    broken = head[:head.index(b"\xff\xda") + 14] + b"\x00\xff" * 200

    async def run():
        svc = DetectionService.from_pipeline("default-gpu", device="cuda")
        await svc.start()
        try:
            imgs = [await svc.decode(b, s) for s, b in items] + [await svc.decode(broken, "broken")]
            assert all(isinstance(i, EncodedImage) for i in imgs)
            return await svc.detect_many(imgs)
        finally:
            await svc.aclose()

    decisions = asyncio.run(run())
    got = np.array([d.probability for d in decisions[:-1]])
    # Batches of another size only (fp16 kernels may differ in the last bits).
    assert (np.abs(got - p_same) <= 0.02).mean() >= 0.9 and not any(d.degraded for d in decisions[:-1])
    assert decisions[-1].degraded or np.isfinite(decisions[-1].probability)
