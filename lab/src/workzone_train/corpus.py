"""The labelled corpus as one list: roadwork-v1 + roadwork-v2 (ten sources) and objects-v1 boxes.

Why one list: every model is judged by leave-one-source-out over all ten sources (a source is one
camera, country or photographer), so the folds, the out-of-fold predictions and the training sets
all need the same sample identities. An image is identified by ``key = "<data set>/<rel path>"``.

Layout expected under ``root`` (``../shared/data`` or a compact copy made by
:func:`write_compact_corpus`): ``roadwork-v1/{manifest.csv,boxes.csv}``,
``roadwork-v2/manifest.csv`` and ``objects-v1/{manifest.csv,boxes.csv}``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image as PILImage

from workzone.errors import DataError
from workzone_train.data import Sample, load_samples

__all__ = [
    "DATASETS",
    "CorpusSample",
    "ObjectBox",
    "load_corpus",
    "load_object_boxes",
    "load_object_images",
    "load_lookalike_crops",
    "condition_of",
    "write_compact_corpus",
]

DATASETS = ("roadwork-v1", "roadwork-v2", "objects-v2")
OBJECTS = "objects-v1"
LOOKALIKES = "objects-v2"
# objects-v2 holds scenes (a scene source of the leave-one-source-out table) and isolated crops of warning
# triangles that are not the road-work sign (cut-outs for training, never scored as scenes).
_SCENE_SOURCES = {LOOKALIKES: ("gtsdb_scenes",)}
_LOOKALIKE_CROP_SOURCES = ("gtsrb_warning",)


@dataclass(frozen=True)
class CorpusSample:
    """One labelled image of the ten-source corpus.

    Attributes:
        key: ``"<data set>/<rel>"``, unique over the corpus.
        sample: the underlying manifest sample (path, rel, label, source, split, notes).
        condition: day / night / dusk / rain / fog.
    """

    key: str
    sample: Sample
    condition: str

    @property
    def label(self) -> int:
        return self.sample.label

    @property
    def source(self) -> str:
        return self.sample.source

    @property
    def path(self) -> Path:
        return self.sample.path


@dataclass(frozen=True)
class ObjectBox:
    """A boxed object: class name and normalised x1, y1, x2, y2."""

    cls: str
    x1: float
    y1: float
    x2: float
    y2: float


def condition_of(sample: Sample) -> str:
    """The imaging condition: the manifest's ``condition`` column, else read from the notes.

    roadwork-v1 has no condition column; its notes mark the CamVid dusk sequence and the stock
    photos checked as night or dusk. Everything else there is daytime.
    """
    if sample.condition:
        return sample.condition.strip().lower()
    notes = sample.notes.lower()
    if "night" in notes:
        return "night"
    if "dusk" in notes:
        return "dusk"
    return "day"


def load_corpus(root: str | Path, *, exclude_sources: Iterable[str] = (),
                datasets: Sequence[str] = DATASETS) -> list[CorpusSample]:
    """Every labelled image of the ten sources (all splits, reviewed label fixes applied).

    Raises:
        DataError: a data set's manifest is missing.
    """
    root = Path(root)
    out: list[CorpusSample] = []
    for ds in datasets:
        manifest = root / ds / "manifest.csv"
        if not manifest.is_file():
            if ds == LOOKALIKES:
                continue  # optional: corpora made before objects-v2 existed
            raise DataError(f"{manifest} does not exist: point --data at the folder holding {', '.join(datasets)}")
        keep = _SCENE_SOURCES.get(ds)
        for s in load_samples(manifest, exclude_sources=exclude_sources):
            if keep is None or s.source in keep:
                out.append(CorpusSample(f"{ds}/{s.rel}", s, condition_of(s)))
    return out


def load_object_boxes(root: str | Path) -> dict[str, list[ObjectBox]]:
    """Boxes by corpus key: the cones of roadwork-v1, the signs, workers, machines of objects-v1 and the
    other traffic signs (``sign_other``) of objects-v2."""
    root = Path(root)
    grouped: dict[str, list[ObjectBox]] = defaultdict(list)
    for ds in ("roadwork-v1", OBJECTS, LOOKALIKES):
        path = root / ds / "boxes.csv"
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                cx, cy, w, h = (float(rec[k]) for k in ("cx", "cy", "w", "h"))
                grouped[f"{ds}/{rec['path']}"].append(ObjectBox(rec["class"], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return dict(grouped)


def load_object_images(root: str | Path) -> list[tuple[str, Path, str, str]]:
    """objects-v1 images as (key, path, source, scene) rows; [] when the data set is absent."""
    manifest = Path(root) / OBJECTS / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as fh:
        return [(f"{OBJECTS}/{r['path']}", manifest.parent / r["path"], r["source"], r.get("scene", ""))
                for r in csv.DictReader(fh)]


def load_lookalike_crops(root: str | Path) -> list[Path]:
    """objects-v2's crops of warning triangles that are not the road-work sign; [] when absent."""
    manifest = Path(root) / LOOKALIKES / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as fh:
        return [manifest.parent / r["path"] for r in csv.DictReader(fh) if r["source"] in _LOOKALIKE_CROP_SOURCES]


def write_compact_corpus(root: str | Path, out: str | Path, *, max_side: int = 384, quality: int = 82,
                         object_max_side: int = 320, site_cutouts: bool = True) -> Path:
    """Downscaled copy of the three data sets (images, manifests, boxes) under ``out``.

    For the GPU machine, whose whole payload is capped at 64 MiB. Boxes stay valid: they are
    normalised and the aspect ratio is kept. Keep ``out`` git-ignored: the images must never be
    committed. Existing files are kept, so a rerun only fills in what is missing.

    With ``site_cutouts`` (needs OpenCV), the workers and machines of objects-v1 are also cut out here, from the
    full-resolution photos, into ``out/objects-v1/cutouts`` (:func:`workzone_train.site_cutouts.write_site_cutouts`):
    training reads them with Pillow alone, and cutting from the downscaled copies would lose the small people.

    Returns:
        ``out``.
    """
    root, out = Path(root), Path(out)
    for ds, side in (("roadwork-v1", max_side), ("roadwork-v2", max_side), (OBJECTS, object_max_side),
                     (LOOKALIKES, max_side)):
        src = root / ds
        if not (src / "manifest.csv").is_file():
            continue
        dst = out / ds
        dst.mkdir(parents=True, exist_ok=True)
        with (src / "manifest.csv").open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for r in rows:
            target = dst / r["path"]
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with PILImage.open(src / r["path"]) as im:
                im = im.convert("RGB")
                if max(im.size) > side:
                    s = side / max(im.size)
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), PILImage.LANCZOS)
                tmp = target.with_suffix(".part")
                im.save(tmp, "JPEG", quality=quality)
                tmp.replace(target)
        for name in ("manifest.csv", "boxes.csv"):
            if (src / name).is_file():
                (dst / name).write_bytes((src / name).read_bytes())
    if site_cutouts and (root / OBJECTS / "manifest.csv").is_file():
        from workzone_train.site_cutouts import CUTOUT_DIR, write_site_cutouts

        write_site_cutouts(root, out / OBJECTS / CUTOUT_DIR)
    return out
