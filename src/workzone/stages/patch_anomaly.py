"""Patch-feature anomaly scoring: how unlike an ordinary road does each part of the image look?

PatchCore-style and offline: a frozen feature extractor (ONNX; built by
:mod:`workzone_train.anomaly_bank` from ImageNet EfficientNet-Lite0) gives one feature per
16 x 16 px patch, and each patch's anomaly is its Euclidean distance to the nearest row of a memory
bank of patch features of ordinary roads (negatives only, fp16 in an ``.npz``). The image score
is the mean of the ``top_k`` largest patch distances, turned into log-odds by the bank's
calibration ``(score - offset) / scale`` (``offset`` and ``scale`` are in the bank's metadata and
can be overridden in the pipeline).

Evidence: the hottest patches as ``anomaly`` boxes (score = their distance squashed to [0, 1],
ignored by detector class maps) and a coarse heat map in the notes, so a decision can show
*where* the image looked unusual. Runs with onnxruntime and numpy only (default install).
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import Field

from workzone.errors import ModelFileError, StageError
from workzone.io.images import resize_for_model
from workzone.stages._model_stage import ModelStage
from workzone.stages._onnx import open_session
from workzone.stages.base import StageParams
from workzone.types import Box, Evidence, Image, StageOutput, sigmoid

__all__ = ["PatchAnomalyParams", "PatchAnomalyStage", "nearest_distances", "anomaly_evidence", "heat_map_text"]


class PatchAnomalyParams(StageParams):
    # No default files ship with the package (the stage is opt-in): `workzone train anomaly-bank` writes both.
    model: str = Field(description="patch feature extractor (ONNX), e.g. anomaly_features.onnx")
    bank: str = Field(description="memory bank .npz (fp16 bank + meta), e.g. anomaly_bank.npz")
    top_k: int = Field(default=3, ge=1, le=64, description="image score = mean of the top_k patch distances")
    offset: float | None = Field(default=None, description="log-odds = (score - offset) / scale; default: the bank's")
    scale: float | None = Field(default=None, gt=0.0, description="see offset; default: the bank's")
    boxes: int = Field(default=3, ge=0, le=32, description="hottest patches reported as 'anomaly' boxes")
    grid: int = Field(default=4, ge=1, le=16, description="side of the heat map written into the notes")
    threads: int = Field(default=1, ge=0, le=64, description="onnxruntime intra-op threads (0 = all cores)")
    batch_size: int = Field(default=8, ge=1, le=256)


class PatchAnomalyStage(ModelStage):
    """Scores images by the distance of their patches to a memory bank of ordinary-road patches."""

    kind = "patch_anomaly"
    requires = ("onnxruntime",)
    tiny_params = {"model": "tiny:patch-extractor.onnx", "bank": "tiny:patch-bank.npz"}
    Params = PatchAnomalyParams
    default_cost = 30.0
    params: PatchAnomalyParams

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._bank: np.ndarray | None = None
        self._bank_sq: np.ndarray | None = None
        self._size = 224
        self._offset = 0.0
        self._scale = 1.0

    def _load_sync(self) -> None:
        p = self.params
        prefix = f"stage {self.name!r}: "
        bank_path = self.context.resolve(p.bank)
        if not bank_path.is_file():
            raise ModelFileError(f"{prefix}memory bank {bank_path} does not exist; build one with "
                                 "workzone_train.anomaly_bank (see docs/stages/patch_anomaly.md)")
        try:
            with np.load(bank_path) as z:
                bank = z["bank"].astype(np.float32)
                meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ModelFileError(f"{prefix}{bank_path} is not a memory bank (.npz with 'bank' and 'meta'): {exc}") from exc
        self._model = open_session(self.context.resolve(p.model), threads=p.threads, device=self.context.device,
                                     inputs=["image"], prefix=prefix, feature="the patch_anomaly stage")
        dims = self._model.get_inputs()[0].shape[2:]
        fixed = dims[0] if dims and isinstance(dims[0], int) else None
        self._size = int(meta.get("size") or fixed or 224)
        if fixed is not None and fixed != self._size:
            raise ModelFileError(f"{prefix}the bank was built at {self._size} px, the extractor takes {fixed} px")
        self._offset = float(meta.get("offset", 0.0) if p.offset is None else p.offset)
        self._scale = float(meta.get("scale", 1.0) if p.scale is None else p.scale)
        self._bank, self._bank_sq = bank, (bank ** 2).sum(1)

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        p = self.params
        out: list[StageOutput] = []
        for i in range(0, len(batch), p.batch_size):
            part = batch[i:i + p.batch_size]
            x = np.stack([resize_for_model(im.pixels, self._size, "squash") for im in part]).astype(np.float32)
            feats = self._model.run(None, {"image": x})[0]  # (n, C, h, w)
            n, c, h, w = feats.shape
            if c != self._bank.shape[1]:
                raise StageError(self.name, f"extractor gives {c} features per patch, the bank has {self._bank.shape[1]}")
            for im, f in zip(part, feats):
                dist = nearest_distances(f.reshape(c, -1).T, self._bank, self._bank_sq).reshape(h, w)
                out.append(self._output(im, dist))
        return out

    def _output(self, img: Image, dist: np.ndarray) -> StageOutput:
        p = self.params
        score = float(np.sort(dist.ravel())[-p.top_k:].mean())
        z = float(np.clip((score - self._offset) / self._scale, -40.0, 40.0))
        heat = sigmoid(np.clip((dist - self._offset) / self._scale, -40, 40))
        note = (f"anomaly: score {score:.3f} (mean of the top {p.top_k} patch distances; offset {self._offset:.3f}, "
                f"scale {self._scale:.3f})")
        return StageOutput(z, anomaly_evidence(img, heat, boxes=p.boxes, grid=p.grid, notes=(note,)))

    async def aclose(self) -> None:
        await super().aclose()
        self._bank = self._bank_sq = None


def nearest_distances(features: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance from each row of ``features`` (P, C) to its nearest row of ``bank`` (M, C).

    Examples:
        >>> nearest_distances(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [3.0, 0.0]])).tolist()
        [0.0, 4.0]
    """
    bank_sq = (bank ** 2).sum(1) if bank_sq is None else bank_sq
    d2 = (features ** 2).sum(1)[:, None] + bank_sq[None, :] - 2.0 * (features @ bank.T)
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def anomaly_evidence(img: Image, heat: np.ndarray, *, boxes: int, grid: int, notes: tuple[str, ...] = ()) -> Evidence:
    """Evidence of a (h, w) patch heat map with values in [0, 1]: the ``boxes`` hottest patches as
    ``anomaly`` boxes in image pixels, and the map as text in the notes."""
    h, w = heat.shape
    out = []
    for idx in np.argsort(heat.ravel())[::-1][:boxes]:
        r, c = divmod(int(idx), w)
        out.append(Box("anomaly", float(np.clip(heat[r, c], 0.0, 1.0)), c * img.width / w, r * img.height / h,
                       (c + 1) * img.width / w, (r + 1) * img.height / h))
    text = f"anomaly heat map {grid}x{grid} (0-9, rows top to bottom): {heat_map_text(heat, grid)}"
    return Evidence(boxes=tuple(out), notes=tuple(notes) + (text,))


def heat_map_text(heat: np.ndarray, grid: int) -> str:
    """A (h, w) heat map in [0, 1] max-pooled to ``grid`` x ``grid`` cells, each written as a digit 0-9.

    Examples:
        >>> heat_map_text(np.array([[0.0, 0.5], [0.2, 1.0]]), 2)
        '05/29'
        >>> heat_map_text(np.array([[0.0, 0.5], [0.2, 1.0]]), 1)
        '9'
    """
    h, w = heat.shape
    rows = []
    for gr in range(grid):
        r0, r1 = gr * h // grid, max((gr + 1) * h // grid, gr * h // grid + 1)
        cells = []
        for gc in range(grid):
            c0, c1 = gc * w // grid, max((gc + 1) * w // grid, gc * w // grid + 1)
            cells.append(str(min(9, int(float(heat[r0:r1, c0:c1].max()) * 10))))
        rows.append("".join(cells))
    return "/".join(rows)
