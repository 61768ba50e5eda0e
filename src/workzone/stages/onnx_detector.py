"""Object detectors exported to ONNX (YOLOX, YOLOv8 and later), run with onnxruntime.

Two output layouts are understood:

* ``yolox``: input BGR 0-255, image pasted at the top-left of a square canvas padded with 114, no
  normalisation; output [1, N, 5 + C] raw grid offsets decoded here with strides 8/16/32
  (``x = (tx + gx) * s``, ``w = exp(tw) * s``), objectness and class scores already sigmoided.
* ``yolov8`` (Ultralytics ``export(format="onnx")``, also v9/v10/11 without NMS): input RGB
  in [0, 1], centred letterbox padded with 114; output [1, 4 + C, N] of (cx, cy, w, h) in input
  pixels followed by class scores.

Class names come from ``class_names`` (a list, or a text file with one name per line) or, for
Ultralytics exports, from the model's ``names`` metadata. Detections become road-work evidence
through :mod:`workzone.stages._evidence_map`.
"""

from __future__ import annotations

import ast
import threading
from typing import Literal, Sequence

import numpy as np
from PIL import Image as PILImage
from pydantic import Field

from workzone.errors import ModelFileError
from workzone.stages._evidence_map import ClassMap, Detection, detections_to_output
from workzone.stages._onnx import open_session
from workzone.stages._model_stage import ModelStage
from workzone.stages.base import StageParams
from workzone.types import Image, StageOutput

__all__ = ["OnnxDetectorParams", "OnnxDetectorStage", "letterbox", "decode_yolox", "decode_yolov8", "nms"]


class OnnxDetectorParams(StageParams):
    model: str = Field(description="path of the .onnx export")
    format: Literal["yolox", "yolov8"] = Field(default="yolox", description="output layout of the export")
    input_size: int | None = Field(default=None, ge=32, le=4096,
                                   description="square input side; default: the model's static input shape")
    class_names: list[str] | str | None = Field(
        default=None, description="class names in output order, or a text file with one per line")
    classes: ClassMap = Field(default_factory=ClassMap, description="detector classes -> road-work evidence")
    conf: float = Field(default=0.25, ge=0.0, le=1.0, description="minimum box confidence")
    iou: float = Field(default=0.45, ge=0.0, le=1.0, description="NMS IoU threshold (per class)")
    max_det: int = Field(default=100, ge=1, le=1000)
    threads: int = Field(default=0, ge=0, le=64, description="onnxruntime intra-op threads (0 = all cores)")


class OnnxDetectorStage(ModelStage):
    """Runs an ONNX detector and scores its boxes as road-work evidence."""

    kind = "onnx_detector"
    requires = ("onnxruntime",)
    tiny_params = {"model": "tiny:yolov8.onnx", "format": "yolov8"}
    Params = OnnxDetectorParams
    default_cost = 40.0
    params: OnnxDetectorParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._input = "images"
        self._size = 640
        self._names: list[str] = []
        # One run at a time: each run already uses every intra-op thread.
        self._lock = threading.Lock()

    def _load_sync(self) -> None:
        path = self.context.resolve(self.params.model)
        session = open_session(path, threads=self.params.threads, device=self.context.device,
                               prefix=f"stage {self.name!r}: ", feature="the ONNX detector")
        inp = session.get_inputs()[0]
        self._input = inp.name
        static = [d for d in inp.shape[2:] if isinstance(d, int)]
        self._size = int(self.params.input_size or (static[0] if static else 640))
        self._names = self._class_names(session)
        self._model = session

    def _class_names(self, session) -> list[str]:
        given = self.params.class_names
        if isinstance(given, list):
            return list(given)
        if isinstance(given, str):
            path = self.context.resolve(given)
            if not path.is_file():
                raise ModelFileError(f"stage {self.name!r}: class_names file {path} does not exist")
            return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        meta = session.get_modelmeta().custom_metadata_map
        if "names" in meta:  # Ultralytics writes "{0: 'person', 1: 'bicycle', ...}"
            try:
                names = ast.literal_eval(meta["names"])
                return [str(names[k]) for k in sorted(names)]
            except (ValueError, SyntaxError) as exc:
                raise ModelFileError(f"stage {self.name!r}: unreadable 'names' metadata: {exc}") from exc
        raise ModelFileError(f"stage {self.name!r}: the model has no 'names' metadata; give class_names")

    async def warmup(self) -> None:
        await self.run_blocking(self._detect, np.full((self._size, self._size, 3), 114, np.uint8))


    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        return [detections_to_output(self._detect(img.pixels), self.params.classes) for img in batch]

    def _detect(self, pixels: np.ndarray) -> list[Detection]:
        """Detections for one RGB uint8 image, in its pixel coordinates."""
        p = self.params
        yolox = p.format == "yolox"
        canvas, scale, (dx, dy) = letterbox(pixels, self._size, pad=114, center=not yolox)
        if yolox:
            x = canvas[:, :, ::-1].astype(np.float32)  # RGB -> BGR, 0-255
        else:
            x = canvas.astype(np.float32) / 255.0
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        with self._lock:
            raw = self._model.run(None, {self._input: x})[0]
        boxes, scores, cls = decode_yolox(raw[0], self._size) if yolox else decode_yolov8(raw[0])
        keep = scores >= p.conf
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        order = nms(boxes, scores, cls, p.iou)[:p.max_det]
        h, w = pixels.shape[:2]
        out = []
        for i in order:
            x1, y1, x2, y2 = boxes[i]
            # Undo the letterbox, then clip to the image.
            x1, x2 = (np.clip([(x1 - dx) / scale, (x2 - dx) / scale], 0, w)).tolist()
            y1, y2 = (np.clip([(y1 - dy) / scale, (y2 - dy) / scale], 0, h)).tolist()
            c = int(cls[i])
            label = self._names[c] if c < len(self._names) else f"class_{c}"
            out.append(Detection(label, float(scores[i]), x1, y1, x2, y2))
        return out


def letterbox(pixels: np.ndarray, size: int, *, pad: int = 114,
              center: bool = True) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Fit an image into a ``size`` x ``size`` canvas, keeping its aspect ratio.

    Args:
        pixels: (H, W, 3) uint8.
        size: canvas side.
        pad: fill value of the border.
        center: centre the image (Ultralytics) or paste it at the top-left (YOLOX).

    Returns:
        (canvas (size, size, 3) uint8, scale, (dx, dy)) with ``canvas_xy = image_xy * scale + d``.

    Examples:
        >>> c, s, d = letterbox(np.zeros((50, 100, 3), np.uint8), 64)
        >>> c.shape, s, d
        ((64, 64, 3), 0.64, (0.0, 16.0))
    """
    h, w = pixels.shape[:2]
    scale = min(size / h, size / w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = np.asarray(PILImage.fromarray(pixels).resize((nw, nh), PILImage.BILINEAR))
    canvas = np.full((size, size, 3), pad, np.uint8)
    dx, dy = ((size - nw) // 2, (size - nh) // 2) if center else (0, 0)
    canvas[dy:dy + nh, dx:dx + nw] = resized
    return canvas, scale, (float(dx), float(dy))


def decode_yolox(raw: np.ndarray, size: int,
                 strides: Sequence[int] = (8, 16, 32)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode YOLOX raw outputs.

    Args:
        raw: (N, 5 + C) rows of (tx, ty, tw, th, objectness, class scores...), grid cells of each
            stride in row-major order, strides ascending.
        size: input side in pixels.
        strides: feature strides.

    Returns:
        boxes (N, 4) x1y1x2y2 in input pixels, scores (N,) = objectness * best class score,
        class ids (N,).
    """
    grids, steps = [], []
    for s in strides:
        n = size // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        steps.append(np.full((n * n, 1), s))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(steps).astype(np.float32)
    if len(grid) != len(raw):
        raise ValueError(f"YOLOX output has {len(raw)} rows; input {size} with strides {tuple(strides)} "
                         f"implies {len(grid)}: check input_size and format")
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(np.minimum(raw[:, 2:4], 20.0)) * stride
    cls_scores = raw[:, 5:]
    cls = cls_scores.argmax(1)
    scores = raw[:, 4] * cls_scores[np.arange(len(raw)), cls]
    return np.concatenate([xy - wh / 2, xy + wh / 2], 1), scores, cls


def decode_yolov8(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode an Ultralytics YOLOv8-style head.

    Args:
        raw: (4 + C, N) rows of (cx, cy, w, h) in input pixels then class scores.

    Returns:
        boxes (N, 4) x1y1x2y2, scores (N,), class ids (N,).
    """
    rows = raw.T
    xy, wh = rows[:, :2], rows[:, 2:4]
    cls = rows[:, 4:].argmax(1)
    scores = rows[np.arange(len(rows)), 4 + cls]
    return np.concatenate([xy - wh / 2, xy + wh / 2], 1), scores, cls


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    """Greedy per-class non-maximum suppression.

    Args:
        boxes: (N, 4) x1y1x2y2.
        scores: (N,).
        classes: (N,) class ids; boxes of different classes never suppress each other.
        iou: overlap above which the lower-scored box is dropped.

    Returns:
        Indices of kept boxes, best first.

    Examples:
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
        >>> nms(b, np.array([0.9, 0.8, 0.7]), np.zeros(3, int), 0.5)
        [0, 2]
    """
    if len(boxes) == 0:
        return []
    # Shifting each class into its own region makes one pass class-aware.
    offset = classes.astype(np.float64)[:, None] * (float(np.abs(boxes).max()) + 1.0)
    b = boxes.astype(np.float64) + offset
    area = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(b[i, 0], b[rest, 0])
        yy1 = np.maximum(b[i, 1], b[rest, 1])
        xx2 = np.minimum(b[i, 2], b[rest, 2])
        yy2 = np.minimum(b[i, 3], b[rest, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= iou]
    return keep
