"""Sign-text OCR on sign-like regions only, matched against a multilingual road-work lexicon.

Why regions: whole-frame OCR on dashcam positives read a road-work word in 1 of 224 images at
about 560 ms each. Signs that say road work are orange, yellow or white panels (rectangles and
diamonds) with dark lettering, so cheap HSV segmentation on a downscaled copy finds candidate
panels; each is cropped from the *full-resolution* decoded image, upscaled when small, and read
with RapidOCR (PP-OCR det + rec, ONNX models inside the ``rapidocr-onnxruntime`` wheel).

Score: abstain (``None``) when no panel is found or nothing is read; a positive log-odds when a
lexicon phrase matches (``strong_log_odds`` or ``weak_log_odds`` times the match score); a mildly
negative one (``no_match_log_odds``) when text was read but matched nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import StageError
from workzone.stages._lexicon import Lexicon, LexiconMatch, load_lexicon
from workzone.stages._model_stage import ModelStage
from workzone.stages.base import StageParams
from workzone.types import Box, Evidence, Image, StageOutput, TextRead

__all__ = ["SignOcrParams", "SignOcrStage", "SignRegion", "propose_sign_regions"]

Colour = Literal["orange", "yellow", "white"]

# OpenCV HSV ranges (H in 0..179). Orange covers US/EU temporary signs, yellow the warning signs
# (and fluorescent yellow-green), white the rectangular regulatory / closure panels.
_HSV_RANGES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "orange": ((4, 120, 110), (22, 255, 255)),
    "yellow": ((18, 90, 120), (40, 255, 255)),
    "white": ((0, 0, 185), (179, 45, 255)),
}


class SignOcrParams(StageParams):
    lexicon: str | None = Field(default=None, description="lexicon YAML (default: the shipped roadwork_lexicon.yaml)")
    languages: list[str] | None = Field(default=None, description="lexicon languages to use (default: all)")
    colours: list[Colour] = Field(default_factory=lambda: ["orange", "yellow", "white"])
    proposal_side: int = Field(default=640, ge=128, le=2048, description="longest side of the copy segmented for panels")
    min_area: float = Field(default=0.0008, gt=0, lt=1, description="smallest panel, as a fraction of the image")
    max_area: float = Field(default=0.3, gt=0, le=1, description="largest panel, as a fraction of the image")
    min_fill: float = Field(default=0.7, ge=0, le=1, description="panel area / its rotated bounding rectangle")
    ink: tuple[float, float] = Field(default=(0.03, 0.6), description="range of dark-pixel fraction inside a panel (text)")
    max_regions: int = Field(default=4, ge=1, le=32, description="most panels read per image (largest first)")
    crop_side: int = Field(default=320, ge=64, le=1280, description="crops are resized so the longer side is this")
    max_upscale: float = Field(default=4.0, ge=1.0, le=8.0)
    text_score: float = Field(default=0.5, ge=0, le=1, description="lowest OCR confidence kept")
    strong_log_odds: float = Field(default=3.0, ge=0, le=20)
    weak_log_odds: float = Field(default=1.0, ge=0, le=20)
    no_match_log_odds: float = Field(default=-0.3, ge=-20, le=0)
    threads: int = Field(default=0, ge=0, le=64, description="onnxruntime intra-op threads (0 = library default)")


@dataclass(frozen=True)
class SignRegion:
    """A sign-like panel in full-resolution pixel coordinates."""

    x1: int
    y1: int
    x2: int
    y2: int
    colour: str
    score: float


class SignOcrStage(ModelStage):
    """Reads text on sign-like panels and scores it against the road-work lexicon."""

    kind = "sign_ocr"
    requires = ("rapidocr_onnxruntime", "cv2")
    tiny_params = {}
    Params = SignOcrParams
    default_cost = 60.0
    params: SignOcrParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lexicon: Lexicon | None = None
        # RapidOCR keeps per-call state on the engine (thresholds); one reader at a time.
        self._lock = threading.Lock()

    def _load_sync(self) -> None:
        require("cv2", "default", "sign region proposals")
        rapid = require("rapidocr_onnxruntime", "default", "sign OCR")
        p = self.params
        kwargs: dict[str, Any] = {"det_limit_type": "max", "det_limit_side_len": max(p.crop_side, 64),
                                  "text_score": p.text_score, "no_cls": True}
        if p.threads:
            kwargs["intra_op_num_threads"] = p.threads
        try:
            self._model = rapid.RapidOCR(**kwargs)
        except Exception as exc:  # noqa: BLE001 - rapidocr raises plain exceptions
            raise StageError(self.name, f"cannot start RapidOCR: {exc}") from exc
        path = self.context.resolve(p.lexicon) if p.lexicon else None
        self._lexicon = load_lexicon(path)

    async def warmup(self) -> None:
        if self._model is not None:
            await self.run_blocking(self._read, np.full((48, 160, 3), 255, np.uint8))


    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        return [self._predict_one(img) for img in batch]

    def _predict_one(self, img: Image) -> StageOutput:
        p = self.params
        regions = propose_sign_regions(img.pixels, colours=p.colours, proposal_side=p.proposal_side,
                                       min_area=p.min_area, max_area=p.max_area, min_fill=p.min_fill,
                                       ink=p.ink, max_regions=p.max_regions)
        if not regions:
            return StageOutput(None, Evidence(notes=("no sign-like region",)))
        reads: list[TextRead] = []
        best: LexiconMatch | None = None
        boxes = []
        for r in regions:
            boxes.append(Box(f"sign-{r.colour}", float(min(1.0, r.score)), r.x1, r.y1, r.x2, r.y2))
            lines = self._read(_crop_for_ocr(img.pixels, r, p.crop_side, p.max_upscale))
            # Each line alone, and the panel's lines joined (a sign often splits "ROAD WORK" / "AHEAD").
            candidates = [t for t, _ in lines] + ([" ".join(t for t, _ in lines)] if len(lines) > 1 else [])
            conf = {t: s for t, s in lines}
            for text in candidates:
                m = self._lexicon.match(text, languages=p.languages)
                reads.append(TextRead(text, float(conf.get(text, min((s for _, s in lines), default=0.0))),
                                      m.phrase.text if m else None, (r.x1, r.y1, r.x2, r.y2)))
                if m and (best is None or _rank(m) > _rank(best)):
                    best = m
        box_t = tuple(boxes)
        if not reads:
            return StageOutput(None, Evidence(boxes=box_t, notes=(f"{len(regions)} region(s), no text read",)))
        if best is None:
            return StageOutput(p.no_match_log_odds, Evidence(boxes=box_t, texts=tuple(reads), notes=("text matched no lexicon phrase",)))
        base = p.strong_log_odds if best.phrase.strong else p.weak_log_odds
        note = f"matched {best.phrase.text!r} ({best.phrase.language}, {'strong' if best.phrase.strong else 'weak'}, score {best.score:.2f})"
        return StageOutput(base * best.score, Evidence(boxes=box_t, texts=tuple(reads), notes=(note,)))

    def _read(self, crop_rgb: np.ndarray) -> list[tuple[str, float]]:
        with self._lock:
            # RapidOCR treats arrays as BGR (OpenCV order).
            result, _ = self._model(np.ascontiguousarray(crop_rgb[:, :, ::-1]), use_cls=False)
        return [(str(t), float(s)) for _, t, s in (result or []) if str(t).strip()]


def _rank(m: LexiconMatch) -> tuple[bool, float]:
    # Strong phrases first, then the most characters matched (as Lexicon.match ranks).
    return m.phrase.strong, len(m.phrase.key) * m.score


def propose_sign_regions(pixels: np.ndarray, *, colours: Sequence[str] = ("orange", "yellow", "white"),
                         proposal_side: int = 640, min_area: float = 0.0008, max_area: float = 0.3,
                         min_fill: float = 0.7, ink: tuple[float, float] = (0.03, 0.6),
                         max_regions: int = 4) -> list[SignRegion]:
    """Find orange / yellow / white panels that look like signs with lettering.

    A panel is a connected region of one colour (holes from its lettering closed) whose area fills
    at least ``min_fill`` of its rotated bounding rectangle (rectangles and diamonds), that does
    not touch the image border (sky, walls), with a plausible aspect ratio, and with a fraction of
    dark pixels inside within ``ink`` (text).

    Args:
        pixels: uint8 RGB (H, W, 3), full resolution.
        colours: which colour masks to use.
        proposal_side: the image is downscaled to this longest side for segmentation.
        min_area: smallest panel as a fraction of the image area.
        max_area: largest panel as a fraction of the image area.
        min_fill: smallest area / rotated-rectangle-area ratio.
        ink: accepted range of the dark-pixel fraction inside the panel.
        max_regions: most panels returned, best first (area x fill x ink presence).

    Returns:
        Regions in full-resolution pixel coordinates.
    """
    cv2 = require("cv2", "default", "sign region proposals")
    h, w = pixels.shape[:2]
    scale = min(1.0, proposal_side / max(h, w))
    small = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else pixels
    sh, sw = small.shape[:2]
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    dark = hsv[:, :, 2] < 100
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
    found: list[SignRegion] = []
    for colour in colours:
        lo, hi = _HSV_RANGES[colour]
        mask = cv2.inRange(hsv, np.array(lo, np.uint8), np.array(hi, np.uint8))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            area = float(cv2.contourArea(c))
            if not (min_area * sh * sw <= area <= max_area * sh * sw):
                continue
            (_, _), (rw, rh), _ = cv2.minAreaRect(c)
            fill = area / max(rw * rh, 1e-6)
            aspect = max(rw, rh) / max(min(rw, rh), 1e-6)
            if fill < min_fill or aspect > 5.0:
                continue
            x, y, bw, bh = cv2.boundingRect(c)
            if x <= 1 or y <= 1 or x + bw >= sw - 1 or y + bh >= sh - 1:
                continue
            inside = np.zeros((bh, bw), np.uint8)
            cv2.drawContours(inside, [c - np.array([x, y])], -1, 1, thickness=-1)
            filled = inside.astype(bool)
            ink_frac = float(dark[y:y + bh, x:x + bw][filled].mean()) if filled.any() else 0.0
            if not (ink[0] <= ink_frac <= ink[1]):
                continue
            inv = 1.0 / scale
            found.append(SignRegion(int(x * inv), int(y * inv), min(w, int(np.ceil((x + bw) * inv))),
                                    min(h, int(np.ceil((y + bh) * inv))), colour, float(fill)))
    found.sort(key=lambda r: (r.x2 - r.x1) * (r.y2 - r.y1) * r.score, reverse=True)
    return _dedupe(found)[:max_regions]


def _dedupe(regions: list[SignRegion], iou: float = 0.5) -> list[SignRegion]:
    kept: list[SignRegion] = []
    for r in regions:
        if all(_iou(r, k) < iou for k in kept):
            kept.append(r)
    return kept


def _iou(a: SignRegion, b: SignRegion) -> float:
    ix = max(0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / max(union, 1)


def _crop_for_ocr(pixels: np.ndarray, r: SignRegion, side: int, max_upscale: float) -> np.ndarray:
    """The region plus a small margin, from full resolution, resized so its longer side is ``side``."""
    cv2 = require("cv2", "default", "sign OCR crops")
    h, w = pixels.shape[:2]
    mx, my = max(2, (r.x2 - r.x1) // 12), max(2, (r.y2 - r.y1) // 12)
    crop = pixels[max(0, r.y1 - my):min(h, r.y2 + my), max(0, r.x1 - mx):min(w, r.x2 + mx)]
    ch, cw = crop.shape[:2]
    f = min(side / max(ch, cw), max_upscale)
    if abs(f - 1.0) < 0.05:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA
    return cv2.resize(crop, (max(1, round(cw * f)), max(1, round(ch * f))), interpolation=interp)
