"""Domain-randomised work zones with exact boxes, for the multi-class object detector.

Why: real boxes exist only for cones (stock photos), road-work signs (German scenes and sign
crops), workers and machines (site photos). Drums, posts, barricades, barriers, fences and arrow
boards have none, and no boxed object stands in a night, rain or fog dashcam frame. So objects are
placed in perspective on the road of real *negative* scenes from every source the model may train
on (the cameras it must not learn as "road work"), one kit at a time as work zones are laid out:
a row of cones, drums, posts or barrier blocks closing a lane; a barricade, beam, sign or arrow
board standing alone with a few cones; a sign cut from a real sign photo on a post. Every object's
visible box is exact because we drew it. Light, weather and camera effects are applied to the
whole composed frame afterwards (:mod:`workzone_train.object_data`), so objects and scene
degrade together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

from workzone_train.props import BOX_TOP_FRACTION, PROPS, draw_prop
from workzone_train.synth import Cutout, _paste, _placements, _visible_box

__all__ = ["OBJECT_CLASSES", "LOOKALIKE_CLASSES", "PROP_CLASS", "SignCutout", "SiteCutouts", "sign_cutout",
           "paste_work_zone_objects", "paste_lookalike_signs"]

# The detector's classes, in output-channel order. Grouped by what a work zone is built from:
# channelizing devices (cone, drum, post), closures (barricade, barrier incl. fences), signs and
# boards, people and machines.
OBJECT_CLASSES: tuple[str, ...] = ("cone", "drum", "post", "barricade", "barrier", "sign", "arrow_board", "worker",
                                   "machine", "sign_other")
# Classes the detector learns in order to tell them apart from work-zone objects; they are never evidence of
# road work (a warning triangle that is not the road-work sign, a speed limit, a keep-right sign).
LOOKALIKE_CLASSES: tuple[str, ...] = ("sign_other",)
PROP_CLASS: dict[str, str] = {
    "drum": "drum", "channelizer": "post", "leitbake": "post", "barricade": "barricade", "striped_beam": "barricade",
    "barrier": "barrier", "fence": "barrier", "diamond_sign": "sign", "triangle_sign": "sign", "panel_sign": "sign",
    "arrow_board": "arrow_board",
}
_ROW_KITS = ("cone", "cone", "drum", "channelizer", "leitbake", "barrier", "fence")
_SINGLE_KITS = ("barricade", "striped_beam", "diamond_sign", "triangle_sign", "panel_sign", "arrow_board", "real_sign")


@dataclass(frozen=True)
class SignCutout:
    """A real road-work sign panel (from a sign crop), RGBA with a triangular soft mask."""

    rgba: np.ndarray


def sign_cutout(crop: np.ndarray) -> SignCutout:
    """Mask a sign crop (the sign fills the crop, with a small margin) with its triangle.

    Road-work signs of the crops (GTSRB class 25) are upward triangles; the crop margin is about
    10 % on each side.
    """
    h, w = crop.shape[:2]
    mask = PILImage.new("L", (w, h), 0)
    mx, my = 0.08 * w, 0.08 * h
    ImageDraw.Draw(mask).polygon([(w / 2, my), (w - mx, h - my), (mx, h - my)], fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(max(0.5, w / 60))))
    return SignCutout(np.dstack([crop, alpha]).astype(np.uint8))


def _sign_on_post(sign: SignCutout, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The sign panel above a grey post, and the fraction of the height the panel takes."""
    panel = sign.rgba
    ph, pw = panel.shape[:2]
    post_h = int(ph * rng.uniform(0.8, 1.6))
    out = np.zeros((ph + post_h, pw, 4), np.uint8)
    out[:ph] = panel
    half = max(1, pw // 24)
    out[ph:, pw // 2 - half:pw // 2 + half + 1] = (110, 110, 110, 255)
    return out, ph / (ph + post_h)


def _box_of(rgba: np.ndarray, top_fraction: float, x: float, y: float, height: float, w: int, h: int
            ) -> tuple[float, float, float, float] | None:
    if top_fraction >= 1.0:
        return _visible_box(rgba, x, y, height, w, h)
    cut = rgba.copy()
    cut[int(round(rgba.shape[0] * top_fraction)):, :, 3] = 0
    return _visible_box(cut, x, y, height, w, h)


def paste_work_zone_objects(
    scene: np.ndarray,
    cones: Sequence[Cutout],
    signs: Sequence[SignCutout],
    rng: np.random.Generator,
    *,
    max_items: int = 7,
    p_second_kit: float = 0.3,
    site: SiteCutouts | None = None,
    p_site: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste one or two work-zone kits into ``scene``.

    Args:
        scene: uint8 RGB (H, W, 3), a frame without road work.
        cones: real cone cutouts (may be empty: drawn props only).
        signs: real sign cutouts (may be empty).
        rng: random generator.
        max_items: most objects in a row kit.
        p_second_kit: chance of a second kit in the same frame.
        site: worker, machine and pedestrian cut-outs (:mod:`workzone_train.site_cutouts`); None or empty
            leaves the kit choice (and the draws from ``rng``) as before.
        p_site: chance that a kit is a site kit (workers beside a row, or a machine with cones) when ``site``
            has workers or machines.

    Returns:
        The new image, (M, 4) float32 pixel boxes x1, y1, x2, y2 of the objects that show, and (M,)
        int64 class indices into :data:`OBJECT_CLASSES`. Pasted pedestrians get no box: they are background.
    """
    h, w = scene.shape[:2]
    out = scene.copy()
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    kits = 2 if rng.random() < p_second_kit else 1
    for _ in range(kits):
        if site is not None and (site.workers or site.machines) and rng.random() < p_site:
            items = _site_kit(h, w, cones, site, rng, max_items)
        else:
            items = _kit(h, w, cones, signs, rng, max_items)
        for rgba, top, cls, (x, y, height) in items:
            if _paste(out, rgba, x, y, height, rng, match=True) is None or cls is None:
                continue
            box = _box_of(rgba, top, x, y, height, w, h)
            if box is not None:
                boxes.append(box)
                classes.append(OBJECT_CLASSES.index(cls))
    return out, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def _kit(h: int, w: int, cones: Sequence[Cutout], signs: Sequence[SignCutout], rng: np.random.Generator,
         max_items: int) -> list[tuple[np.ndarray, float, str, tuple[float, float, float]]]:
    """The objects of one kit as (rgba, box top fraction, class, (x, y_base, height))."""
    items: list[tuple[np.ndarray, float, str, tuple[float, float, float]]] = []
    if rng.random() < 0.55:
        name = _ROW_KITS[int(rng.integers(len(_ROW_KITS)))]
        if name == "cone" and not cones:
            name = "drum"
        wide = name in ("barrier", "fence")
        n = int(rng.integers(1, 3)) if wide else int(rng.integers(2, max_items + 1))
        places = _placements(h, w, n, rng, row=True)
        names = [name] * n
    else:
        name = _SINGLE_KITS[int(rng.integers(len(_SINGLE_KITS)))]
        if name == "real_sign" and not signs:
            name = "triangle_sign"
        extra = int(rng.integers(0, 4))
        places = _placements(h, w, 1 + extra, rng, row=rng.random() < 0.5)
        filler = "cone" if cones and rng.random() < 0.6 else "drum"
        names = [name] + [filler] * extra
        rng.shuffle(names)
    same_cone = cones[int(rng.integers(len(cones)))] if cones else None
    for (x, y, height), kind in zip(places, names):
        if kind == "cone":
            cut = same_cone if rng.random() < 0.7 else cones[int(rng.integers(len(cones)))]
            items.append((cut.rgba, 1.0, "cone", (x, y, height)))
        elif kind == "real_sign":
            rgba, top = _sign_on_post(signs[int(rng.integers(len(signs)))], rng)
            size = min(height * 3.0 * rng.uniform(0.8, 1.2), 0.45 * h)
            items.append((rgba, top, "sign", (x, y, size)))
        else:
            size = min(height * PROPS[kind][1] * rng.uniform(0.8, 1.2), 0.45 * h)
            rgba = draw_prop(kind, rng, px=int(np.clip(size * 2, 24, 240)))
            items.append((rgba, BOX_TOP_FRACTION.get(kind, 1.0), PROP_CLASS[kind], (x, y, size)))
    return items


@dataclass(frozen=True)
class SiteCutouts:
    """Cut-outs of people and machines for site kits, by role (:func:`workzone_train.site_cutouts.load_site_cutouts`).

    Attributes:
        workers: people in hi-vis clothing, labelled ``worker``.
        machines: construction machines, labelled ``machine``.
        pedestrians: people without hi-vis, pasted unlabelled (background), so that a person at the
            roadside is not enough to be a worker.
    """

    workers: tuple[np.ndarray, ...] = ()
    machines: tuple[np.ndarray, ...] = ()
    pedestrians: tuple[np.ndarray, ...] = ()

    @classmethod
    def from_cutouts(cls, cutouts: Sequence[object]) -> "SiteCutouts":
        """Group :class:`workzone_train.site_cutouts.SiteCutout` objects by their role (``cls``)."""
        by = {role: tuple(c.rgba for c in cutouts if c.cls == role) for role in ("worker", "machine", "pedestrian")}
        return cls(by["worker"], by["machine"], by["pedestrian"])


# Heights relative to a traffic cone at the same distance (a cone 0.7 m; a person 1.6-1.9 m; a wheel loader,
# excavator or dump truck 2.8-3.8 m), and a person's sideways step from the cone row (0.3-1.2 m).
_PERSON_PER_CONE = (2.3, 2.7)
_MACHINE_PER_CONE = (4.0, 5.4)
_STEP_PER_CONE = (0.5, 1.7)


def _site_kit(h: int, w: int, cones: Sequence[Cutout], site: SiteCutouts, rng: np.random.Generator,
              max_items: int) -> list[tuple[np.ndarray, float, str | None, tuple[float, float, float]]]:
    """A site kit: workers beside a row of cones or drums, or a machine behind a few cones (a worker may stand by).

    Scales follow the cone height that :func:`_placements` gives each road position, so a worker stands about
    2.5 cones tall and a machine 4-5 cones tall at the same distance. Class None marks a pedestrian (pasted,
    not labelled). Items are ordered far to near, so nearer objects are pasted over farther ones.
    """
    items: list[tuple[np.ndarray, float, str | None, tuple[float, float, float]]] = []
    machine = bool(site.machines) and (not site.workers or rng.random() < 0.45)
    n = int(rng.integers(2, 5)) if machine else int(rng.integers(3, max_items + 1))
    places = _placements(h, w, n, rng, row=True)
    filler = "cone" if cones and rng.random() < 0.65 else "drum"
    same_cone = cones[int(rng.integers(len(cones)))] if cones else None
    for x, y, height in places:
        if filler == "cone":
            items.append((same_cone.rgba, 1.0, "cone", (x, y, height)))
        else:
            size = min(height * PROPS["drum"][1] * rng.uniform(0.9, 1.1), 0.45 * h)
            items.append((draw_prop("drum", rng, px=int(np.clip(size * 2, 24, 240))), 1.0, "drum", (x, y, size)))
    side = float(rng.choice([-1.0, 1.0]))
    if machine:
        # The machine works behind (farther than) the row's first devices, beside the closed lane.
        x, y, height = places[int(rng.integers(0, max(1, n // 2)))]
        rgba = _flip_and_stretch(site.machines[int(rng.integers(len(site.machines)))], rng)
        size = height * rng.uniform(*_MACHINE_PER_CONE)
        # A machine filling the frame hides the scene and no dashcam drives into one: at most 0.45 of the height
        # and 0.6 of the width (slightly small for its distance when near; the cones beside it stay exact).
        size = min(size, 0.45 * h, 0.6 * w * rgba.shape[0] / rgba.shape[1])
        dx = side * (0.5 * size * rgba.shape[1] / rgba.shape[0] + height * rng.uniform(0.2, 1.0))
        items.append((rgba, 1.0, "machine", (x + dx, y - 0.15 * height, size)))
    n_workers = int(rng.integers(0, 2)) if machine else int(rng.integers(1, min(3, n - 1) + 1))
    for k in rng.permutation(n)[:n_workers] if site.workers else []:
        x, y, height = places[int(k)]
        rgba = _flip_and_stretch(site.workers[int(rng.integers(len(site.workers)))], rng)
        size = min(height * rng.uniform(*_PERSON_PER_CONE), 0.55 * h)
        items.append((rgba, 1.0, "worker", (x + side * height * rng.uniform(*_STEP_PER_CONE),
                                            y + height * rng.uniform(-0.1, 0.1), size)))
    if site.pedestrians and rng.random() < 0.5:
        # Passers-by on the same road, away from the row: a person is not a worker without hi-vis.
        for x, y, height in _placements(h, w, int(rng.integers(1, 3)), rng, row=False):
            rgba = _flip_and_stretch(site.pedestrians[int(rng.integers(len(site.pedestrians)))], rng)
            items.append((rgba, 1.0, None, (x, y, min(height * rng.uniform(*_PERSON_PER_CONE), 0.55 * h))))
    return sorted(items, key=lambda it: it[3][1])


def _flip_and_stretch(rgba: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror half the time and widen by 0-20 %: the site photos were stretched to 640x640 by their exporter
    (original aspect unknown; landscape originals make people too thin), and machines face either way."""
    if rng.random() < 0.5:
        rgba = rgba[:, ::-1]
    f = rng.uniform(1.0, 1.2)
    h, w = rgba.shape[:2]
    return np.asarray(PILImage.fromarray(np.ascontiguousarray(rgba), "RGBA").resize(
        (max(2, round(w * f)), h), PILImage.BILINEAR))


def paste_lookalike_signs(scene: np.ndarray, signs: Sequence[SignCutout], rng: np.random.Generator, *,
                          max_signs: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste one or two real warning triangles that are *not* the road-work sign, on posts, as ``sign_other``.

    Why: the synthetic and real road-work signs are red-bordered triangles too; without triangles that are
    labelled something else, the detector learns "triangle = road work" (a level-crossing or bend sign
    raised 12 of 61 false alarms on unseen cameras).

    Returns:
        The new image, (M, 4) float32 pixel boxes of the sign panels that show, (M,) int64 class indices.
    """
    h, w = scene.shape[:2]
    out = scene.copy()
    boxes: list[tuple[float, float, float, float]] = []
    n = int(rng.integers(1, max_signs + 1))
    for x, y, height in _placements(h, w, n, rng, row=False):
        rgba, top = _sign_on_post(signs[int(rng.integers(len(signs)))], rng)
        size = min(height * 3.0 * rng.uniform(0.8, 1.2), 0.45 * h)
        if _paste(out, rgba, x, y, size, rng, match=True) is None:
            continue
        box = _box_of(rgba, top, x, y, size, w, h)
        if box is not None:
            boxes.append(box)
    cls = np.full(len(boxes), OBJECT_CLASSES.index("sign_other"), np.int64)
    return out, np.array(boxes, np.float32).reshape(-1, 4), cls
