"""Embedded ONNX image classifier: whole image, overlapping tiles, and test-time augmentation.

Test-time augmentation (TTA) scores several views of each region (the whole image, or each tile)
and averages their logits: ``flip`` adds the mirror image of every view, ``crops: 5`` adds five
crops (centre and four corners, each ``crop_scale`` of each side). Pipelines run a TTA variant as a
later tier, so only the images the plain classifier leaves undecided pay for the extra views.

The model contract (see ``workzone/models/MODEL_CARD.md``): input ``image`` float32
[N, 3, S, S] RGB in [0, 1] (normalisation inside the graph), output ``logit`` [N] or [N, 1]
road-work log-odds. A JSON sidecar next to the ``.onnx`` file gives ``input_size`` and ``resize``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from workzone.io.images import ResizeMode, resize_for_model, tile_boxes
from workzone.stages._onnx import open_session, read_sidecar
from workzone.stages._torch_backend import TorchBackendParams, first_output, open_runner, torch_inputs, use_torch
from workzone.stages._model_stage import ModelStage
from workzone.types import Box, EarlierReports, Evidence, Image, StageOutput, sigmoid

__all__ = ["OnnxClassifierParams", "OnnxClassifierStage", "five_crop_boxes"]


class OnnxClassifierParams(TorchBackendParams):
    model: str = Field(default="builtin:roadwork_lite0.onnx", description="ONNX file, or builtin:NAME")
    input_size: int | None = Field(default=None, ge=16, le=2048, description="override the sidecar's input size")
    resize: ResizeMode | None = Field(default=None, description="override the sidecar's resize mode")
    tiles: int = Field(default=1, ge=1, le=6, description="grid of overlapping tiles per side (1 = whole image)")
    overlap: float = Field(default=0.25, ge=0.0, lt=0.9)
    include_full: bool = Field(default=False, description="with tiles > 1, also score the whole image")
    pool: Literal["max", "mean", "logsumexp"] = Field(default="max", description="how tile scores combine")
    flip: bool = Field(default=False, description="average with the horizontally flipped image (TTA)")
    crops: Literal[0, 5] = Field(default=0, description="TTA crops per region: 0, or 5 (centre + 4 corners) "
                                                        "averaged with the whole region")
    crop_scale: float = Field(default=0.8, ge=0.3, lt=1.0, description="side of each TTA crop, as a fraction "
                                                                         "of the region's side")
    batch_size: int = Field(default=16, ge=1, le=512)
    threads: int = Field(default=0, ge=0, le=64, description="onnxruntime intra-op threads (0 = all cores)")


class OnnxClassifierStage(ModelStage):
    """Scores images with an ONNX classifier; tiles find small evidence the whole frame misses.

    The model (``_model``) is the onnxruntime session, or the torch backend's runner; :class:`ModelStage`
    loads and closes it.
    """

    kind = "onnx_classifier"
    requires = ("onnxruntime",)
    tiny_params = {}
    Params = OnnxClassifierParams
    default_cost = 30.0
    params: OnnxClassifierParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._runner = None  # the torch backend's TorchModelRunner, when it is used (then also the model)
        self._size = 224
        self._mode: ResizeMode = "squash"

    def _load_sync(self) -> None:
        path = self.context.resolve(self.params.model)
        meta = read_sidecar(path)
        self._size = int(self.params.input_size or meta.get("input_size", 224))
        self._mode = self.params.resize or meta.get("resize", "squash")
        if use_torch(self.params.backend, self.context.device):
            self._runner = self._model = open_runner(path, self.params, self.context.device)
            return
        self._model = open_session(path, threads=self.params.threads, device=self.context.device,
                                   inputs=["image"], prefix=f"stage {self.name!r}: ", feature="the ONNX classifier")

    def _torch_runner(self) -> Any:
        return self._runner

    def _rows_per_image(self) -> int:
        p = self.params
        return 2 if p.flip and p.tiles == 1 and not p.crops else 1

    async def warmup(self) -> None:
        # One model-sized input, whatever the tiling: the session's first run, not the pre-processing.
        await self.run_blocking(self._infer, np.zeros((1, 3, self._size, self._size), np.float32))

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        if not batch:
            return []
        p = self.params
        if self._runner is not None and p.tiles == 1 and not p.crops:
            return self._predict_whole_torch(batch)
        views: list[np.ndarray] = []
        # owners[k] indexes the (image, region) in `regions` that view k belongs to: a region's logit is
        # the mean over its TTA views, and only then are an image's regions pooled.
        owners: list[int] = []
        regions: list[tuple[int, tuple[int, int, int, int] | None]] = []
        for idx, img in enumerate(batch):
            boxes: list[tuple[int, int, int, int] | None] = []
            if p.tiles == 1 or p.include_full:
                boxes.append(None)
            if p.tiles > 1:
                boxes.extend(tile_boxes(img.width, img.height, p.tiles, p.overlap))
            for r in boxes:
                px = img.pixels if r is None else img.pixels[r[1]:r[3], r[0]:r[2]]
                for x in self._views(px):
                    views.append(x)
                    owners.append(len(regions))
                regions.append((idx, r))
        logits = np.concatenate([self._infer(np.stack(views[i:i + p.batch_size]))
                                 for i in range(0, len(views), p.batch_size)])
        sums = np.bincount(owners, weights=logits, minlength=len(regions))
        counts = np.bincount(owners, minlength=len(regions))
        per_image: list[list[tuple[float, tuple[int, int, int, int] | None]]] = [[] for _ in batch]
        for j, (idx, region) in enumerate(regions):
            per_image[idx].append((float(sums[j] / counts[j]), region))
        return [self._summarise(batch[i], per_image[i]) for i in range(len(batch))]

    def _predict_whole_torch(self, batch: list[Image]) -> list[StageOutput]:
        """Whole-image scores (and mirror TTA) with resize, model and averaging on the runner's device."""
        logits = first_output(self._runner, torch_inputs(self._runner, batch, self._size, self._mode,
                                                          flip=self.params.flip)).reshape(-1)
        if self.params.flip:
            logits = (logits[:len(batch)] + logits[len(batch):]) / 2.0
        return [self._summarise(img, [(float(z), None)]) for img, z in zip(batch, logits)]

    def _views(self, px: np.ndarray) -> list[np.ndarray]:
        """The model inputs whose logits are averaged for one region: itself, its crops, their mirrors."""
        p = self.params
        h, w = px.shape[:2]
        boxes = five_crop_boxes(w, h, p.crop_scale) if p.crops else []
        parts = [px] + [px[y1:y2, x1:x2] for x1, y1, x2, y2 in boxes]
        out = []
        for part in parts:
            x = resize_for_model(np.ascontiguousarray(part), self._size, self._mode)
            out.append(x)
            if p.flip:
                out.append(x[:, :, ::-1].copy())
        return out

    def _summarise(self, img: Image, scored: list[tuple[float, tuple[int, int, int, int] | None]]) -> StageOutput:
        values = np.array([s for s, _ in scored], dtype=np.float64)
        if self.params.pool == "max":
            z = float(values.max())
        elif self.params.pool == "mean":
            z = float(values.mean())
        else:
            m = values.max()
            z = float(m + math.log(np.exp(values - m).sum() / len(values)))
        best_score, best_region = max(scored, key=lambda t: t[0])
        boxes: tuple[Box, ...] = ()
        if best_region is not None:
            x1, y1, x2, y2 = best_region
            boxes = (Box("roadwork-tile", sigmoid(best_score), x1, y1, x2, y2),)
        notes = (f"{len(scored)} view(s), pooled by {self.params.pool}",) if len(scored) > 1 else ()
        if self.params.crops:
            n = (1 + self.params.crops) * (2 if self.params.flip else 1)
            notes += (f"TTA: mean logit of {n} views per region (whole + {self.params.crops} crops at "
                      f"{self.params.crop_scale:g}{', each also flipped' if self.params.flip else ''})",)
        elif self.params.flip:
            notes += ("TTA: mean logit of 2 views per region (as is and mirrored)",)
        return StageOutput(log_odds=z, evidence=Evidence(boxes=boxes, notes=notes))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if self._runner is not None:
            return self._runner.run_numpy(x).reshape(len(x), -1)[:, 0]
        # onnxruntime sessions are thread-safe for run(), but ModelStage's lock serialises them so that
        # concurrent batches do not oversubscribe the cores (each run already uses every intra-op thread).
        with self._lock:
            out = self._model.run(None, {"image": x.astype(np.float32, copy=False)})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)[:, 0]

    async def aclose(self) -> None:
        self._runner = None
        await super().aclose()


def five_crop_boxes(width: int, height: int, scale: float) -> list[tuple[int, int, int, int]]:
    """The five TTA crops of a region: centre, then the four corners, each ``scale`` of each side.

    Args:
        width: region width in pixels.
        height: region height in pixels.
        scale: crop side as a fraction of the region's side, in (0, 1].

    Returns:
        Five (x1, y1, x2, y2) boxes: centre, top-left, top-right, bottom-left, bottom-right.

    Examples:
        >>> five_crop_boxes(100, 50, 0.8)
        [(10, 5, 90, 45), (0, 0, 80, 40), (20, 0, 100, 40), (0, 10, 80, 50), (20, 10, 100, 50)]
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale: expected in (0, 1], got {scale}")
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    dx, dy = width - cw, height - ch
    return [(dx // 2, dy // 2, dx // 2 + cw, dy // 2 + ch),
            (0, 0, cw, ch), (dx, 0, width, ch), (0, dy, cw, height), (dx, dy, width, height)]


