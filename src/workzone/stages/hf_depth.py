"""Depth-based size check: drop detections whose real size is implausible.

The stage wraps a detector stage (``detector``: an inline stage spec with its own ``kind``), runs
it, and only when it found boxes runs a transformers depth model (Depth Anything, DPT, ...). Each
box's distance gives its real height and width under a pinhole camera:

    focal_px = (W / 2) / tan(hfov / 2)        size_m = size_px * Z / focal_px

Relative-depth models (Depth Anything V1/V2 "relative") output disparity up to scale, so the
scale is fitted to a flat road seen from a dashcam: a ground pixel ``y`` rows below the horizon
is at ``Z = focal_px * camera_height / y``. The fit uses the bottom band of the image centre
(where the road usually is); metric models are used as they are. Boxes whose size falls outside
the per-class range (widened by ``tolerance``) are dropped, and the kept ones are re-scored with
the detector's own class map, so a 4 m "cone" on a billboard no longer counts.

These are rough geometric estimates: they catch gross errors (a poster, a toy, a reflection),
not 20 % ones.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workzone.errors import ConfigError
from workzone.stages._evidence_map import ClassMap, score_boxes
from workzone.stages._hf_common import HFParams, HFStage, chunks, load_hf, to_pil
from workzone.stages.registry import create_stage
from workzone.types import Box, EarlierReports, Evidence, Image, StageOutput

__all__ = ["DepthParams", "DepthStage", "SizeRange", "focal_px", "fit_ground_scale", "box_size_m"]


class SizeRange(BaseModel):
    """Plausible real size of one evidence class, in metres."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    height: tuple[float, float] = Field(description="(min, max) height in m")
    width: tuple[float, float] = Field(description="(min, max) width in m")

    @model_validator(mode="after")
    def _ordered(self) -> "SizeRange":
        for name, (lo, hi) in (("height", self.height), ("width", self.width)):
            if not 0 <= lo < hi:
                raise ValueError(f"{name}: expected 0 <= min < max, got ({lo}, {hi})")
        return self


DEFAULT_SIZES: dict[str, SizeRange] = {
    "cone": SizeRange(height=(0.25, 1.2), width=(0.15, 0.8)),
    "drum": SizeRange(height=(0.6, 1.4), width=(0.4, 0.9)),
    "barricade": SizeRange(height=(0.6, 2.0), width=(0.5, 3.5)),
    "barrier": SizeRange(height=(0.3, 2.5), width=(0.3, 20.0)),
    "arrow_board": SizeRange(height=(0.8, 4.0), width=(0.9, 3.0)),
    "sign": SizeRange(height=(0.3, 3.5), width=(0.3, 2.5)),
    "worker": SizeRange(height=(0.8, 2.2), width=(0.3, 1.5)),
    "machine": SizeRange(height=(1.0, 6.0), width=(1.0, 12.0)),
    "light": SizeRange(height=(0.05, 1.0), width=(0.05, 1.0)),
}


class DepthParams(HFParams):
    model: str = Field(default="depth-anything/Depth-Anything-V2-Small-hf",
                       description="depth model hub id or local directory (AutoModelForDepthEstimation)")
    detector: dict[str, Any] = Field(description="inline detector stage: {kind: ..., <its params>}")
    depth_type: Literal["auto", "relative", "metric"] = Field(
        default="auto", description="auto: the model config's depth_estimation_type, else relative")
    hfov_deg: float = Field(default=70.0, gt=10.0, lt=170.0, description="assumed horizontal field of view")
    camera_height_m: float = Field(default=1.4, gt=0.2, le=5.0, description="assumed camera height above the road")
    horizon: float = Field(default=0.5, ge=0.0, lt=0.95, description="horizon row as a fraction of image height")
    sizes: dict[str, SizeRange] = Field(default_factory=dict, description="per-class ranges, merged over the defaults")
    tolerance: float = Field(default=1.5, ge=1.0, le=100.0, description="ranges widen to [min / t, max * t]")
    min_box_px: int = Field(default=8, ge=1, description="smaller boxes are kept unchecked (too few pixels)")
    batch_size: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _check_detector(self) -> "DepthParams":
        if not isinstance(self.detector.get("kind"), str):
            raise ValueError("detector: expected an inline stage spec with a 'kind', e.g. "
                             "{kind: onnx_detector, model: ..., class_names: ...}")
        if self.detector["kind"].replace("-", "_") == "hf_depth":
            raise ValueError("detector: a depth stage cannot wrap another depth stage")
        return self


class DepthStage(HFStage):
    """Runs a detector, then drops its boxes whose depth-implied size is implausible."""

    kind = "hf_depth"
    tiny_params = {"model": "tiny:depth", "detector": {"kind": "onnx_detector", "model": "tiny:yolov8.onnx",
                                                      "format": "yolov8", "conf": 0.3}}
    Params = DepthParams
    default_cost = 600.0
    params: DepthParams

    @classmethod
    def nested_specs(cls, params: DepthParams) -> list[tuple[str, dict[str, Any]]]:
        return [("detector", dict(params.detector))]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        spec = dict(self.params.detector)
        kind = spec.pop("kind")
        # Built here, not in load(), so a bad nested key fails when the pipeline is validated.
        self.detector = create_stage(kind, f"{self.name}.detector", spec, context=self.context)
        self._classes = getattr(self.detector.params, "classes", None)
        if not isinstance(self._classes, ClassMap):
            raise ConfigError(f"stage {self.name!r} (kind hf_depth): detector kind {kind!r} has no 'classes' "
                              "class map; wrap a detector (onnx_detector, ultralytics, rfdetr, hf_zero_shot_detection)")
        self._sizes = {**DEFAULT_SIZES, **self.params.sizes}
        self._metric = False

    async def load(self) -> None:
        await self.detector.load()
        await super().load()

    def _load_sync(self) -> None:
        model, processor, device = load_hf(self, self.params, "AutoModelForDepthEstimation", "AutoImageProcessor")
        kind = self.params.depth_type
        if kind == "auto":
            kind = getattr(model.config, "depth_estimation_type", None) or "relative"
        self._metric = kind == "metric"
        self._model, self._processor, self._device = model, processor, device

    async def warmup(self) -> None:
        await self.detector.warmup()
        await self.run_blocking(self._depth_maps, [Image(np.zeros((64, 64, 3), np.uint8))])

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        self.require_loaded(self._model)
        batch = list(batch)
        inner = await self.detector.predict(batch)
        todo = [i for i, out in enumerate(inner) if out.evidence.boxes]
        depths = await self.run_blocking(self._depth_maps, [batch[i] for i in todo]) if todo else []
        outputs = list(inner)
        for i, depth in zip(todo, depths):
            outputs[i] = self._check(batch[i], inner[i], depth)
        return outputs

    def _depth_maps(self, images: list[Image]) -> list[np.ndarray]:
        """(H, W) float32 depth (metric) or disparity (relative) per image, at image resolution."""
        import torch

        maps: list[np.ndarray | None] = [None] * len(images)
        # Depth processors keep the aspect ratio, so only images of one size can share a tensor.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((im.height, im.width), []).append(i)
        for size, idx in groups.items():
            for part in chunks(idx, self.params.batch_size):
                inputs = self._processor(images=to_pil([images[i] for i in part]), return_tensors="pt").to(self._device)
                inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
                with self._lock, torch.inference_mode():
                    raw = self._model(**inputs)
                post = self._processor.post_process_depth_estimation(raw, target_sizes=[size] * len(part))
                for i, r in zip(part, post):
                    maps[i] = r["predicted_depth"].float().cpu().numpy()
        return maps  # type: ignore[return-value]

    def _check(self, img: Image, inner: StageOutput, depth: np.ndarray) -> StageOutput:
        p = self.params
        f = focal_px(img.width, p.hfov_deg)
        if self._metric:
            metric = depth
            note = "metric depth"
        else:
            scale = fit_ground_scale(depth, f, p.camera_height_m, p.horizon)
            if scale is None:
                return StageOutput(inner.log_odds, Evidence(inner.evidence.boxes, inner.evidence.texts,
                                                            inner.evidence.notes + ("depth: no usable road pixels to "
                                                                                    "fix the scale; boxes unchecked",)))
            with np.errstate(divide="ignore"):
                metric = np.where(depth > 0, scale / np.maximum(depth, 1e-12), np.inf)
            note = f"relative depth scaled by the road plane (s={scale:.3g})"
        kept: list[Box] = []
        dropped: list[str] = []
        for b in inner.evidence.boxes:
            rng = self._sizes.get(b.label)
            if rng is None or min(b.x2 - b.x1, b.y2 - b.y1) < p.min_box_px:
                kept.append(b)
                continue
            size = box_size_m(metric, b, f)
            if size is None:
                kept.append(b)
                continue
            h, w, z = size
            t = p.tolerance
            ok = rng.height[0] / t <= h <= rng.height[1] * t and rng.width[0] / t <= w <= rng.width[1] * t
            if ok:
                kept.append(b)
            else:
                dropped.append(f"{b.label} {h:.2f} m tall x {w:.2f} m wide at {z:.1f} m")
        notes = inner.evidence.notes + (f"depth: kept {len(kept)}/{len(inner.evidence.boxes)} boxes ({note})",)
        if dropped:
            notes += ("dropped implausible " + "; ".join(dropped[:5]),)
        z = score_boxes(kept, self._classes) if dropped else inner.log_odds
        return StageOutput(z, Evidence(tuple(kept), inner.evidence.texts, notes))

    async def aclose(self) -> None:
        await self.detector.aclose()
        await super().aclose()


def focal_px(width: int, hfov_deg: float) -> float:
    """Focal length in pixels of a pinhole camera with the given horizontal field of view.

    Examples:
        >>> round(focal_px(1000, 90.0), 6)
        500.0
    """
    return (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)


def fit_ground_scale(disparity: np.ndarray, focal: float, camera_height: float, horizon: float,
                     band: float = 0.2, centre: float = 0.5) -> float | None:
    """Scale ``s`` such that ``s / disparity`` is metric depth, fitted on the road in front.

    A ground pixel ``dy`` rows below the horizon is at ``Z = focal * camera_height / dy``. Over the
    bottom ``band`` of the image and its middle ``centre`` fraction of columns, ``s`` is the
    median of ``Z * disparity``.

    Args:
        disparity: (H, W) relative inverse depth (larger = nearer).
        focal: focal length in pixels.
        camera_height: camera height above the road in m.
        horizon: horizon row as a fraction of H.
        band: fraction of rows at the bottom used.
        centre: fraction of columns in the middle used.

    Returns:
        The scale, or None when no pixel there has a positive disparity below the horizon.
    """
    h, w = disparity.shape
    y0 = max(int(h * (1 - band)), int(h * horizon) + 1)
    x0, x1 = int(w * (1 - centre) / 2), int(w * (1 + centre) / 2)
    if y0 >= h or x1 <= x0:
        return None
    rows = np.arange(y0, h, dtype=np.float64) + 0.5 - h * horizon
    ground_z = focal * camera_height / rows
    patch = disparity[y0:h, x0:x1].astype(np.float64)
    ratio = (ground_z[:, None] * patch)[patch > 0]
    if ratio.size == 0:
        return None
    s = float(np.median(ratio))
    return s if math.isfinite(s) and s > 0 else None


def box_size_m(depth: np.ndarray, box: Box, focal: float) -> tuple[float, float, float] | None:
    """(height m, width m, distance m) of a box from metric depth.

    The distance is the median depth over the box's central half, which is mostly the object
    itself rather than what is behind it.

    Returns:
        None when the box has no finite positive depth.
    """
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    hw, hh = max((box.x2 - box.x1) / 4, 0.5), max((box.y2 - box.y1) / 4, 0.5)
    ys = slice(max(int(cy - hh), 0), max(int(math.ceil(cy + hh)), int(cy - hh) + 1))
    xs = slice(max(int(cx - hw), 0), max(int(math.ceil(cx + hw)), int(cx - hw) + 1))
    vals = depth[ys, xs]
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size == 0:
        return None
    z = float(np.median(vals))
    return (box.y2 - box.y1) * z / focal, (box.x2 - box.x1) * z / focal, z
