"""Promptable segmentation (SAM, SAM 2, SAM 3, EdgeTAM) that confirms or vetoes detector boxes.

The stage takes boxes either from an inline ``detector`` (like ``hf_depth``) or, without one, from
the stages that ran before it in the cascade (the reports the cascade passes ``predict`` as ``evidence``),
prompts the segmentation model with each box, and checks the mask's shape against the box's
evidence class:

* ``fill``: mask pixels / box pixels. A cone is a triangle (about half its box); a flat poster or
  a billboard panel fills its box; a mask of a few pixels means nothing object-like is there.
* ``aspect``: the mask's own height / width. A cone, a drum and a worker stand upright.
* ``max_image_frac``: mask pixels / image pixels. A 30 % "cone" is a close-up or a billboard.
* ``on_road``: the mask's lowest row is below the horizon, where the road is, not on a facade.

A box whose mask fails a check is vetoed (dropped from the evidence, the score recomputed with the
class map, as ``hf_depth`` does); one that passes is confirmed. The evidence notes give, per box,
the mask area and the shape numbers, so a decision says *why* a cone counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workzone.errors import ConfigError, StageError
from workzone.stages._evidence_map import ClassMap, score_boxes
from workzone.stages._hf_common import HFParams, HFStage, load_hf, to_pil
from workzone.stages.onnx_detector import nms
from workzone.stages.registry import create_stage
from workzone.types import Box, EarlierReports, Evidence, Image, StageOutput, StageReport

__all__ = ["SegmentationParams", "SegmentationStage", "ShapeRule", "MaskShape", "clip_to_box", "measure_mask", "judge_shape",
           "DEFAULT_SHAPES"]


class ShapeRule(BaseModel):
    """What a mask of one evidence class may look like; ``None`` leaves a check off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fill: tuple[float, float] | None = Field(default=None, description="(min, max) mask pixels / box pixels")
    aspect: tuple[float, float] | None = Field(default=None, description="(min, max) mask height / width")
    max_image_frac: float | None = Field(default=None, gt=0.0, le=1.0, description="mask pixels / image pixels")
    on_road: bool = Field(default=False, description="the mask's bottom must be below the horizon")

    @model_validator(mode="after")
    def _ordered(self) -> "ShapeRule":
        for name, rng in (("fill", self.fill), ("aspect", self.aspect)):
            if rng is not None and not 0 <= rng[0] < rng[1]:
                raise ValueError(f"{name}: expected 0 <= min < max, got {rng}")
        return self


DEFAULT_SHAPES: dict[str, ShapeRule] = {
    "cone": ShapeRule(fill=(0.2, 0.85), aspect=(0.8, 5.0), max_image_frac=0.05, on_road=True),
    "drum": ShapeRule(fill=(0.35, 0.97), aspect=(0.7, 3.5), max_image_frac=0.08, on_road=True),
    "barricade": ShapeRule(fill=(0.15, 0.97), max_image_frac=0.3, on_road=True),
    "worker": ShapeRule(fill=(0.2, 0.9), aspect=(0.9, 6.0), max_image_frac=0.3),
    "sign": ShapeRule(fill=(0.25, 1.0), max_image_frac=0.2),
}


class SegmentationParams(HFParams):
    model: str = Field(default="facebook/sam-vit-base",
                       description="SAM / SAM 2 / SAM 3 / EdgeTAM hub id or local directory")
    architecture: Literal["auto", "sam3_tracker"] = Field(
        default="auto", description="auto: AutoModelForMaskGeneration; sam3_tracker: SAM 3's box-prompted "
                                    "tracker (facebook/sam3 has model_type sam3, which the auto class does not map)")
    detector: dict[str, Any] | None = Field(default=None, description="inline detector stage {kind: ..., <params>}; "
                                                                      "without it, earlier stages' boxes are used")
    from_stages: list[str] | None = Field(default=None, description="earlier stages whose boxes prompt the model "
                                                                    "(default: every earlier stage with boxes)")
    classes: ClassMap = Field(default_factory=ClassMap, description="scores the kept boxes (without a detector)")
    shapes: dict[str, ShapeRule] = Field(default_factory=dict, description="per-class rules, merged over the defaults")
    horizon: float = Field(default=0.45, ge=0.0, lt=1.0, description="horizon row as a fraction of image height")
    min_fill: float = Field(default=0.05, ge=0.0, lt=1.0, description="a mask filling less of its box: no object")
    min_mask_score: float = Field(default=0.0, ge=0.0, le=1.0,
                                  description="masks the model rates below this leave their box unchecked")
    max_boxes: int = Field(default=16, ge=1, le=256, description="segment at most this many boxes per image")
    min_box_px: int = Field(default=6, ge=1, description="smaller boxes are kept unchecked (too few pixels)")
    batch_size: int = Field(default=1, ge=1, le=1, description="one image per model call (each has its own boxes)")

    @model_validator(mode="after")
    def _check_prompts(self) -> "SegmentationParams":
        if self.detector is not None:
            if not isinstance(self.detector.get("kind"), str):
                raise ValueError("detector: expected an inline stage spec with a 'kind', e.g. "
                                 "{kind: onnx_detector, model: ..., class_names: ...}")
            if self.detector["kind"].replace("-", "_") == "hf_segmentation":
                raise ValueError("detector: a segmentation stage cannot wrap another segmentation stage")
            if self.from_stages is not None:
                raise ValueError("from_stages: give either an inline detector or from_stages, not both")
        return self


@dataclass(frozen=True)
class MaskShape:
    """Shape numbers of one mask inside its prompt box.

    Attributes:
        area_px: mask pixels.
        fill: area_px / box area.
        aspect: mask bounding-box height / width (0 for an empty mask).
        image_frac: area_px / image pixels.
        bottom: the mask's lowest row as a fraction of image height (0 for an empty mask).
    """

    area_px: int
    fill: float
    aspect: float
    image_frac: float
    bottom: float


class SegmentationStage(HFStage):
    """Segments each prompt box and keeps the boxes whose mask has the shape of their class."""

    kind = "hf_segmentation"
    tiny_params = {"model": "tiny:sam", "detector": {"kind": "onnx_detector", "model": "tiny:yolov8.onnx",
                                                    "format": "yolov8", "conf": 0.3}}
    Params = SegmentationParams
    default_cost = 400.0
    params: SegmentationParams

    @classmethod
    def nested_specs(cls, params: SegmentationParams) -> list[tuple[str, dict[str, Any]]]:
        return [] if params.detector is None else [("detector", dict(params.detector))]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.detector = None
        self._classes = self.params.classes
        if self.params.detector is not None:
            spec = dict(self.params.detector)
            kind = spec.pop("kind")
            # Built here, not in load(), so a bad nested key fails when the pipeline is validated.
            self.detector = create_stage(kind, f"{self.name}.detector", spec, context=self.context)
            classes = getattr(self.detector.params, "classes", None)
            if not isinstance(classes, ClassMap):
                raise ConfigError(f"stage {self.name!r} (kind hf_segmentation): detector kind {kind!r} has no "
                                  "'classes' class map; wrap a detector (onnx_detector, ultralytics, rfdetr, "
                                  "hf_zero_shot_detection)")
            self._classes = classes
        self._shapes = {**DEFAULT_SHAPES, **self.params.shapes}

    async def load(self) -> None:
        if self.detector is not None:
            await self.detector.load()
        await super().load()

    def _load_sync(self) -> None:
        names = {"auto": ("AutoModelForMaskGeneration", "AutoProcessor"),
                 "sam3_tracker": ("Sam3TrackerModel", "Sam3TrackerProcessor")}[self.params.architecture]
        self._model, self._processor, self._device = load_hf(self, self.params, *names)

    async def warmup(self) -> None:
        if self.detector is not None:
            await self.detector.warmup()
        img = Image(np.zeros((64, 64, 3), np.uint8))
        await self.run_blocking(self._segment, img, [Box("cone", 0.5, 16, 8, 40, 56)])

    async def predict(self, batch: Sequence[Image],
                      evidence: EarlierReports | None = None) -> list[StageOutput]:
        self.require_loaded(self._model)
        batch = list(batch)
        if evidence is not None and len(evidence) != len(batch):
            raise StageError(self.name, f"got evidence for {len(evidence)} images and {len(batch)} images")
        if self.detector is not None:
            inner = await self.detector.predict(batch)
        else:
            inner = [self._prompts_from(() if evidence is None else evidence[i]) for i in range(len(batch))]
        outputs = list(inner)
        for i, out in enumerate(inner):
            if out.evidence.boxes:
                outputs[i] = await self.run_blocking(self._judge, batch[i], out)
        return outputs

    def _prompts_from(self, reports: Sequence[StageReport]) -> StageOutput:
        """The earlier stages' boxes of road-work classes, scored with the class map; none: the stage abstains.

        Boxes the class map does not count (an anomaly stage's ``anomaly`` patches) are not segmented:
        vetoing them could not change the score.
        """
        wanted = self.params.from_stages
        boxes: list[Box] = []
        used: list[str] = []
        for rep in reports:
            if rep.stage == self.name or (wanted is not None and rep.stage not in wanted) or not rep.evidence.boxes:
                continue
            counted = [b for b in rep.evidence.boxes if self._classes.resolve(b.label) is not None]
            if counted:
                boxes.extend(counted)
                used.append(rep.stage)
        if not boxes:
            return StageOutput(None, Evidence(notes=("segmentation: no earlier boxes to check; abstains",)))
        boxes = _dedupe(boxes)
        return StageOutput(score_boxes(boxes, self._classes),
                           Evidence(tuple(boxes), (), (f"segmentation: prompts from {', '.join(used)}",)))

    def _judge(self, img: Image, inner: StageOutput) -> StageOutput:
        p = self.params
        boxes = list(inner.evidence.boxes)
        order = sorted(range(len(boxes)), key=lambda i: -boxes[i].score)
        todo = [i for i in order if min(boxes[i].x2 - boxes[i].x1, boxes[i].y2 - boxes[i].y1) >= p.min_box_px]
        todo = todo[:p.max_boxes]
        masks, scores = self._segment(img, [boxes[i] for i in todo]) if todo else (np.zeros((0, 1, 1), bool), [])
        verdicts: dict[int, str | None] = {}
        lines: dict[int, str] = {}
        total = np.zeros((img.height, img.width), bool)
        for j, i in enumerate(todo):
            b = boxes[i]
            if scores[j] < p.min_mask_score:
                lines[i] = f"{b.label} unchecked (mask score {scores[j]:.2f})"
                continue
            shape = measure_mask(masks[j], b)
            total |= clip_to_box(masks[j], b)
            why = judge_shape(shape, self._shapes.get(b.label), p.horizon, p.min_fill)
            verdicts[i] = why
            desc = (f"{b.label} mask {shape.area_px} px (fill {shape.fill:.2f}, h/w {shape.aspect:.2f}, "
                    f"{100 * shape.image_frac:.1f}% of image, bottom at {shape.bottom:.2f})")
            lines[i] = desc + (f": vetoed, {why}" if why else ": confirmed")
        kept = [b for i, b in enumerate(boxes) if verdicts.get(i) is None]
        n_conf = sum(1 for v in verdicts.values() if v is None)
        n_veto = len(boxes) - len(kept)
        notes = inner.evidence.notes + (
            f"segmentation: confirmed {n_conf}, vetoed {n_veto}, unchecked {len(boxes) - len(verdicts)} of "
            f"{len(boxes)} boxes; masks cover {100 * total.mean():.2f}% of the image",)
        notes += tuple(lines[i] for i in order if i in lines)[:8]
        z = score_boxes(kept, self._classes) if n_veto else inner.log_odds
        return StageOutput(z, Evidence(tuple(kept), inner.evidence.texts, notes))

    def _segment(self, img: Image, boxes: list[Box]) -> tuple[np.ndarray, list[float]]:
        """(len(boxes), H, W) bool masks at image resolution and the model's score of each."""
        import torch

        prompt = [[[b.x1, b.y1, b.x2, b.y2] for b in boxes]]
        inputs = self._processor(images=to_pil([img]), input_boxes=prompt, return_tensors="pt").to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        with self._lock, torch.inference_mode():
            out = self._model(**inputs, multimask_output=False)
        sizes = [inputs["original_sizes"].cpu()]
        if "reshaped_input_sizes" in inputs:  # SAM (v1) un-pads with it; SAM 2 / 3 do not need it
            sizes.append(inputs["reshaped_input_sizes"].cpu())
        masks = self._processor.post_process_masks(out.pred_masks.float().cpu(), *sizes)[0]
        masks = masks.reshape(len(boxes), -1, img.height, img.width)[:, 0].numpy().astype(bool)
        # SAM regresses the IoU unbounded; SAM 2 / 3 pass it through a sigmoid. Clip to one scale.
        scores = out.iou_scores.float().cpu().reshape(len(boxes), -1)[:, 0].clamp(0.0, 1.0).tolist()
        return masks, [float(s) for s in scores]

    async def aclose(self) -> None:
        if self.detector is not None:
            await self.detector.aclose()
        await super().aclose()


def _dedupe(boxes: list[Box], iou: float = 0.7) -> list[Box]:
    """Drop a box that overlaps a higher-scored one of the same label by more than ``iou``."""
    labels = sorted({b.label for b in boxes})
    keep = nms(np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float64), np.array([b.score for b in boxes]),
               np.array([labels.index(b.label) for b in boxes]), iou)
    return [boxes[i] for i in keep]


def clip_to_box(mask: np.ndarray, box: Box) -> np.ndarray:
    """The (H, W) mask with everything outside ``box`` cleared: SAM may spill onto what the object touches."""
    h, w = mask.shape
    x1, y1 = max(int(box.x1), 0), max(int(box.y1), 0)
    x2, y2 = min(int(np.ceil(box.x2)), w), min(int(np.ceil(box.y2)), h)
    inside = np.zeros_like(mask)
    inside[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
    return inside


def measure_mask(mask: np.ndarray, box: Box) -> MaskShape:
    """Shape numbers of the part of a (H, W) bool mask inside its prompt ``box``.

    Examples:
        >>> m = np.zeros((10, 10), bool); m[2:8, 4:6] = True
        >>> s = measure_mask(m, Box("cone", 0.9, 3, 2, 7, 8))
        >>> (s.area_px, round(s.fill, 2), s.aspect, s.bottom)
        (12, 0.5, 3.0, 0.8)
    """
    h, w = mask.shape
    mask = clip_to_box(mask, box)
    area = int(mask.sum())
    box_area = max((min(box.x2, w) - max(box.x1, 0)) * (min(box.y2, h) - max(box.y1, 0)), 1.0)
    if area == 0:
        return MaskShape(0, 0.0, 0.0, 0.0, 0.0)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    mh, mw = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return MaskShape(area, area / box_area, float(mh / mw), area / float(h * w), float((rows[-1] + 1) / h))


def judge_shape(shape: MaskShape, rule: ShapeRule | None, horizon: float, min_fill: float) -> str | None:
    """Why the mask does not fit its class (a veto), or None when it does.

    Examples:
        >>> cone = DEFAULT_SHAPES["cone"]
        >>> judge_shape(MaskShape(300, 0.5, 2.0, 0.004, 0.8), cone, 0.45, 0.05) is None
        True
        >>> judge_shape(MaskShape(9000, 0.99, 0.6, 0.12, 0.3), cone, 0.45, 0.05)
        'fill 0.99 outside [0.2, 0.85]'
    """
    if shape.fill < min_fill:
        return f"mask fills {shape.fill:.2f} of its box (no object)"
    if rule is None:
        return None
    if rule.fill is not None and not rule.fill[0] <= shape.fill <= rule.fill[1]:
        return f"fill {shape.fill:.2f} outside [{rule.fill[0]:g}, {rule.fill[1]:g}]"
    if rule.aspect is not None and not rule.aspect[0] <= shape.aspect <= rule.aspect[1]:
        return f"height/width {shape.aspect:.2f} outside [{rule.aspect[0]:g}, {rule.aspect[1]:g}]"
    if rule.max_image_frac is not None and shape.image_frac > rule.max_image_frac:
        return f"covers {100 * shape.image_frac:.1f}% of the image (max {100 * rule.max_image_frac:g}%)"
    if rule.on_road and shape.bottom <= horizon:
        return f"bottom at {shape.bottom:.2f} of the height, above the horizon ({horizon:g}): not on the road"
    return None
