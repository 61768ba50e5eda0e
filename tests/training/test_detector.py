"""Cone detector: targets, loss, decode, AP, copy-paste boxes, and one CPU training step."""

from __future__ import annotations

import numpy as np
import pytest

from workzone.stages.roadwork_detector import STRIDE, decode_detections
from workzone_train.detector import average_precision, box_iou, encode_targets


def _exported_from_targets(heat: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """What a perfect model exports for these targets (peaks only, sizes in pixels)."""
    peaks = np.where(heat == 1.0, heat, 0.0)
    wh = np.exp(reg[2:4]) * STRIDE
    return np.concatenate([peaks, reg[0:2], wh], axis=0).astype(np.float32)


@pytest.mark.parametrize("boxes", [
    np.array([[10, 20, 40, 80]], np.float32),
    np.array([[10, 20, 40, 80], [100, 100, 108, 116], [60, 5, 90, 30]], np.float32),
    np.array([[3.5, 4.25, 9.0, 15.0]], np.float32),  # a cone of a few pixels
])
def test_encode_then_decode_recovers_boxes(boxes):
    heat, reg, mask = encode_targets(boxes, 128)
    assert heat.shape == (1, 16, 16) and reg.shape == (4, 16, 16) and mask.shape == (16, 16)
    assert int(mask.sum()) == len(boxes)
    assert np.all((reg[0:2][:, mask > 0] >= 0) & (reg[0:2][:, mask > 0] < 1))
    det = decode_detections(_exported_from_targets(heat, reg), score_threshold=0.5)
    assert len(det) == len(boxes)
    iou = box_iou(det[:, :4], boxes)
    assert np.all(iou.max(axis=1) > 0.99)


def test_encode_targets_empty_and_heat_shape():
    heat, reg, mask = encode_targets(np.zeros((0, 4), np.float32), 64)
    assert heat.max() == 0 and mask.sum() == 0
    heat, _, _ = encode_targets(np.array([[16, 16, 48, 48]], np.float32), 64)
    cy, cx = np.unravel_index(np.argmax(heat[0]), heat[0].shape)
    assert (cy, cx) == (4, 4)
    assert 0 < heat[0, 4, 5] < 1 and heat[0, 0, 0] < 0.01  # Gaussian falls off with distance


def test_decode_threshold_order_and_limit():
    out = np.zeros((5, 8, 8), np.float32)
    out[3:5] = 16
    out[0, 1, 1], out[0, 5, 5], out[0, 2, 6] = 0.2, 0.9, 0.5
    det = decode_detections(out, score_threshold=0.3)
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.5])
    assert len(decode_detections(out, score_threshold=0.0, max_detections=2)) == 2


@pytest.mark.parametrize("dets, truths, expected", [
    ([[[0, 0, 10, 10, 0.9]]], [[[0, 0, 10, 10]]], 1.0),
    ([[[0, 0, 10, 10, 0.9], [20, 20, 30, 30, 0.95]]], [[[0, 0, 10, 10]]], 0.5),  # a false alarm ranked first
    ([[[0, 0, 10, 10, 0.9]]], [[[0, 0, 10, 10], [50, 50, 60, 60]]], 0.5),  # half the cones missed
    ([[[0, 0, 10, 10, 0.9], [0, 0, 10, 10, 0.8]]], [[[0, 0, 10, 10]]], 1.0),  # duplicate after the hit
    ([[]], [[[0, 0, 10, 10]]], 0.0),
])
def test_average_precision_table(dets, truths, expected):
    got = average_precision([np.array(d, np.float64) for d in dets], [np.array(t, np.float64) for t in truths])
    assert got == pytest.approx(expected)


def test_average_precision_without_truth_is_nan():
    assert np.isnan(average_precision([np.zeros((0, 5))], [np.zeros((0, 4))]))


def test_paste_cones_with_boxes_marks_changed_pixels():
    from workzone_train.detector_data import paste_cones_with_boxes
    from workzone_train.synth import Cutout

    cone = np.zeros((60, 40, 4), np.uint8)
    cone[..., 0], cone[..., 1] = 255, 120
    cone[5:55, 8:32, 3] = 255  # opaque body inside a transparent margin
    scene = np.full((240, 320, 3), 90, np.uint8)
    rng = np.random.default_rng(3)
    out, boxes = paste_cones_with_boxes(scene, [Cutout(cone, "x")], rng, max_cones=4)
    assert len(boxes) >= 1
    changed = np.abs(out.astype(int) - scene).sum(axis=2) > 30
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
        inside = changed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
        assert inside.mean() > 0.4  # the box covers pasted paint, not empty road
    ys, xs = np.nonzero(changed)
    covered = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes:
        covered[max(0, int(y1) - 1):int(np.ceil(y2)) + 1, max(0, int(x1) - 1):int(np.ceil(x2)) + 1] = True
    assert covered[ys, xs].mean() > 0.9  # and nearly every pasted pixel is inside a box


def test_one_cpu_training_step_lowers_loss_on_the_same_batch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from workzone_train.detector import build_detector, detection_loss

    torch.manual_seed(0)
    model = build_detector(pretrained=False, width=16, drop_connect=0.0)
    size = 64
    x = torch.rand(2, 3, size, size)
    targets = [encode_targets(np.array([[8, 8, 24, 40]], np.float32), size),
               encode_targets(np.array([[30, 30, 50, 60], [4, 40, 12, 56]], np.float32), size)]
    heat, reg, mask = (torch.from_numpy(np.stack(t)) for t in zip(*targets))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for _ in range(3):
        h, r = model.forward_train(x)
        assert h.shape == (2, 1, 8, 8) and r.shape == (2, 4, 8, 8)
        loss, parts = detection_loss(h, r, heat, reg, mask)
        assert np.isfinite(loss.item()) and set(parts) == {"heat", "offset", "size"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 5, 8, 8)
    assert torch.all(out[:, 0] >= 0) and torch.all(out[:, 0] <= 1) and torch.all(out[:, 3:5] > 0)
