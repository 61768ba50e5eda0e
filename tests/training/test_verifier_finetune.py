"""The fine-tuned verifier: crop pack -> per-fold fine-tuning (resumable) -> out-of-fold probabilities -> ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_lookalikes_and_verifier import lookalike_root  # noqa: F401 - the fixture
from tests.training.test_object_detector_data import corpus_root  # noqa: F401 - lookalike_root's fixture
from workzone_train.scene_synth import OBJECT_CLASSES

torch = pytest.importorskip("torch")

FOLDS = {"a": ("TraCon",), "b": ("gtsdb_scenes",)}


@pytest.fixture()
def pack(lookalike_root: Path, tmp_path: Path) -> tuple[list, Path]:  # noqa: F811 - the imported fixture
    from workzone_train.verifier import build_crop_table
    from workzone_train.verifier_tune import write_crop_pack

    cone, sign = OBJECT_CLASSES.index("cone"), OBJECT_CLASSES.index("sign")
    dets = {"roadwork-v1/images/n0.jpg": np.array([[0.1, 0.1, 0.2, 0.3, 0.6, cone]]),
            "objects-v2/images/gtsdb_scenes/s0.jpg": np.array([[0.4, 0.3, 0.6, 0.5, 0.5, sign]]),
            "roadwork-v1/images/c0.jpg": np.array([[0.415, 0.27, 0.585, 0.83, 0.9, cone]]),
            "roadwork-v1/images/w0.jpg": np.array([[0.4, 0.4, 0.5, 0.6, 0.7, cone]])}
    items = build_crop_table(lookalike_root, dets, OBJECT_CLASSES, props_per_source=1)
    out = tmp_path / "pack.npz"
    counts = write_crop_pack(items, FOLDS, out)
    return items, out, counts


def test_the_pack_holds_every_crop_with_its_fold_and_decodes(pack: tuple) -> None:
    from workzone_train.verifier import items_digest
    from workzone_train.verifier_tune import read_crop_pack

    items, path, counts = pack
    p = read_crop_pack(path)
    assert p["pixels"].shape[1:] == (96, 96, 3) and p["pixels"].dtype == np.uint8
    assert len(p["pixels"]) == len(p["labels"]) == sum(counts.values())
    assert p["digest"] == items_digest(items) and p["folds"] == {k: list(v) for k, v in FOLDS.items()}
    # every candidate is marked for scoring; the German scene's candidate belongs to fold b
    scored = {items[i].key for i in p["owner"][p["scored"]]}
    assert scored == {it.key for it in items if it.kind == "candidate"}
    german = [k for k, i in enumerate(p["owner"]) if items[i].key.startswith("objects-v2/images/gtsdb_scenes")]
    assert german and all(p["fold"][k] == "b" for k in german)
    # each crop's window side, in its image's pixels: twice the candidate's longer side here
    from PIL import Image

    c0 = next(k for k, i in enumerate(p["owner"]) if items[i].key == "roadwork-v1/images/c0.jpg"
              and items[i].kind == "candidate")
    w, h = Image.open(items[p["owner"][c0]].path).size
    assert p["side"][c0] == pytest.approx(2 * max(0.17 * w, 0.56 * h), rel=1e-3)
    assert (p["side"] >= 12).all()


def test_matching_resolution_takes_detail_away_only_from_sharper_crops() -> None:
    from workzone_train.verifier_tune import _augment, match_resolution

    # a 96-px checkerboard of 2-px squares: all its detail is fine
    x = np.broadcast_to(((np.indices((96, 96)) // 2).sum(0) % 2).astype(np.float32), (3, 96, 96)).copy()
    detail = lambda a: float(np.abs(np.diff(a, axis=-1)).mean())  # noqa: E731
    assert detail(match_resolution(x, side=300.0, seen=20.0)) < 0.2 * detail(x)
    # a window already as small as the one it would be seen through keeps its pixels
    assert np.array_equal(match_resolution(x, side=20.0, seen=30.0), x)
    assert np.array_equal(match_resolution(x, side=300.0, seen=120.0), x)
    # in training views, with match=1 every view is brought down to the drawn window
    coarse = np.broadcast_to(((np.indices((96, 96)) // 8).sum(0) % 2).astype(np.float32), (3, 96, 96)).copy()
    rng = np.random.default_rng(0)
    views = [_augment(coarse, rng, side=300.0, seen_sides=np.array([8.0]), match=1.0) for _ in range(16)]
    plain = [_augment(coarse, rng) for _ in range(16)]
    assert np.mean([detail(v) for v in views]) < 0.5 * np.mean([detail(v) for v in plain])


def test_a_fold_trains_resumes_and_scores_only_what_it_never_saw(pack: tuple, tmp_path: Path) -> None:
    from workzone_train.verifier import VERIFIER_CLASSES, items_digest
    from workzone_train.verifier_tune import finetune_fold, read_crop_pack, read_verifier_run

    items, path, _ = pack
    p = read_crop_pack(path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "pack.json").write_text(json.dumps({"digest": p["digest"], "folds": p["folds"]}))
    logs: list[str] = []
    with pytest.raises(ValueError, match="window sides"):  # a pack written before sides were kept
        finetune_fold({**p, "side": None}, "b", run, epochs=1, match=0.5, device="cpu", log=logs.append)
    first = finetune_fold(p, "b", run, epochs=1, batch_size=4, workers=0, device="cpu", match=0.5, log=logs.append)
    assert (run / "b-seed0.ckpt").exists() and first["train_crops_by_class"]["sign_other"] >= 1
    assert first["match_resolution"] == 0.5
    # the held-out fold's labelled crops are out of its training data
    held = int(((p["fold"] == "b") & (p["labels"] != "")).sum())
    assert sum(first["train_crops_by_class"].values()) == int((p["labels"] != "").sum()) - held
    # a rerun with more epochs resumes from the checkpoint instead of starting again
    finetune_fold(p, "b", run, epochs=2, batch_size=4, workers=0, device="cpu", match=0.5, log=logs.append)
    assert any("resumed at epoch 1" in m for m in logs)
    assert (run / "b-seed0.pt").exists()  # the fold model's weights, to score other candidates out of fold
    probs = read_verifier_run(run, items_digest(items))
    b_candidates = {i for i, it in enumerate(items) if it.kind == "candidate" and it.source == "gtsdb_scenes"}
    assert set(probs) == b_candidates
    for v in probs.values():
        assert v.shape == (len(VERIFIER_CLASSES),) and abs(float(v.sum()) - 1.0) < 1e-2
    with pytest.raises(ValueError, match="another crop table"):
        read_verifier_run(run, "0" * 40)


def test_the_full_model_exports_to_the_stage_format(pack: tuple, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from workzone_train.verifier import VERIFIER_CLASSES
    from workzone_train.verifier_tune import export_finetuned_verifier, finetune_fold, read_crop_pack

    _, path, _ = pack
    run = tmp_path / "run"
    finetune_fold(read_crop_pack(path), "full", run, epochs=1, batch_size=4, workers=0, device="cpu",
                  log=lambda _: None)
    onnx_path = export_finetuned_verifier(run / "verifier-seed0.pt", tmp_path / "v.onnx", sidecar={"crop_size": 96})
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"crops": np.random.default_rng(0).random((3, 3, 96, 96), np.float32)})[0]
    assert out.shape == (3, len(VERIFIER_CLASSES)) and np.allclose(out.sum(1), 1.0, atol=1e-3)
    assert json.loads(onnx_path.with_suffix(".json").read_text())["crop_size"] == 96


def test_the_loso_command_runs_each_fold_in_its_own_process(pack: tuple, tmp_path: Path) -> None:
    from workzone_train.verifier import items_digest
    from workzone_train.verifier_tune import read_verifier_run, run_verifier_loso

    items, path, _ = pack
    run = tmp_path / "run"
    run_verifier_loso(["--pack", str(path), "--out", str(run), "--folds", "b,full", "--epochs", "1", "--batch-size",
                       "4", "--workers", "0", "--device", "cpu"])
    assert (run / "verifier-seed0.pt").exists() and (run / "b-seed0.log").exists()
    assert set(read_verifier_run(run, items_digest(items))) == {
        i for i, it in enumerate(items) if it.kind == "candidate" and it.source == "gtsdb_scenes"}


def test_loso_scores_read_a_finetuned_run_and_export_its_full_model(lookalike_root: Path, tmp_path: Path  # noqa: F811
                                                                    ) -> None:
    pytest.importorskip("onnxruntime")
    from workzone.evaluation.loso_table import OofRow
    from workzone_train.corpus import load_corpus
    from workzone_train.verifier import build_crop_table, verify_oof_scores
    from workzone_train.verifier_tune import run_verifier_loso, write_crop_pack

    folds = {"a": ("TraCon",), "b": ("CamVid", "nexar-eduardo", "gtsdb_scenes", "WMaia9-workzone")}
    cone = OBJECT_CLASSES.index("cone")
    corpus = load_corpus(lookalike_root)
    rng = np.random.default_rng(0)
    dets = {s.key: np.array([[0.3, 0.3, 0.5, 0.6, float(rng.uniform(0.2, 0.9)), cone]]) for s in corpus}
    pack = tmp_path / "pack.npz"
    write_crop_pack(build_crop_table(lookalike_root, dets, OBJECT_CLASSES), folds, pack)
    run = tmp_path / "run"
    run_verifier_loso(["--pack", str(pack), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                       "--device", "cpu", "--match-resolution", "0.5"])
    fold_of = {s: f for f, srcs in folds.items() for s in srcs}
    rows = [OofRow(s.key, s.source, s.condition, s.label, fold_of[s.source], {}) for s in corpus]
    models = tmp_path / "models"
    out = verify_oof_scores(lookalike_root, corpus, rows, dets, folds, finetuned=run, export_to=models,
                            shipped_features="classes", log=lambda _: None)
    assert set(out) == {"verify", "verify-blind", "verify-classes"}
    assert all(len(v) == len(rows) and np.isfinite(v).all() for v in out.values())
    sidecar = json.loads((models / "roadwork_verifier.json").read_text())
    assert "fine-tuned" in sidecar["training"]["backbone"] and sidecar["decision"]["features"][-1] == "people_n"
    # the recipe travels with the model: the fold processes got --match-resolution, and the sidecar says so
    assert sidecar["training"]["match_resolution"] == 0.5 and sidecar["training"]["backbone_lr"] == 1.0
    assert (models / "roadwork_verifier.onnx").stat().st_size > 1_000_000


def test_fold_runs_name_every_fold_and_each_seed_of_the_full_model() -> None:
    from workzone_train.fold_processes import fold_runs

    assert fold_runs(["a", "b"], "all", "0,1") == [("a", 0), ("b", 0), ("full", 0), ("full", 1)]
    assert fold_runs(["a", "b"], "b", "0,1") == [("b", 0)]
    assert fold_runs(["a", "b"], "full", "3") == [("full", 3)]
    assert fold_runs(["a", "b"], "all", "0", fold_seed=1) == [("a", 1), ("b", 1), ("full", 0)]


def test_matched_copies_join_the_frozen_verifiers_cache(pack: tuple, tmp_path: Path) -> None:
    from workzone.errors import DataError
    from workzone_train.verifier import embed_crops, items_digest
    from workzone_train.verifier_tune import add_matched_copies, read_crop_pack

    items, path, _ = pack
    p = read_crop_pack(path)
    feats, owner, labels, aug = embed_crops(items, augment=1)
    cache = tmp_path / "crops.npz"
    np.savez(cache, feats=feats, owner=np.array(owner), labels=np.array(labels), aug=np.array(aug),
             digest=np.array(items_digest(items)))
    n = add_matched_copies(cache, p, tmp_path / "matched.npz")
    copied = (p["labels"] != "") & ~p["scored"]
    assert n == int(copied.sum()) > 0
    out = np.load(tmp_path / "matched.npz")
    assert out["feats"].shape == (len(feats) + n, feats.shape[1]) and np.isfinite(out["feats"]).all()
    assert list(out["labels"][len(feats):]) == list(p["labels"][copied]) and out["aug"][len(feats):].all()
    np.savez(cache, feats=feats, owner=np.array(owner), labels=np.array(labels), aug=np.array(aug),
             digest=np.array("another table"))
    with pytest.raises(DataError, match="different crop tables"):
        add_matched_copies(cache, p, tmp_path / "never.npz")
    assert not (tmp_path / "never.npz").exists()


def test_pseudo_labels_take_unboxed_candidates_on_road_work_images_outside_the_fold(pack: tuple,
                                                                                   tmp_path: Path) -> None:
    from workzone.errors import DataError
    from workzone_train.verifier_tune import PSEUDO_CLASSES, finetune_fold, pseudo_labels, read_crop_pack

    items, path, _ = pack
    p = read_crop_pack(path)
    # the pack keeps each candidate's detector score and class, and nothing for other crops
    for k, i in enumerate(p["owner"]):
        it = items[i]
        assert (p["det_score"][k], p["det_class"][k]) == ((pytest.approx(it.det_score), it.det_class)
                                                         if it.kind == "candidate" else (0.0, ""))
    # the one unboxed candidate on a road-work image (w0: a cone at 0.7) is the only one that may take a label
    rows = np.flatnonzero(pseudo_labels(p, 0.5))
    assert [items[p["owner"][k]].key for k in rows] == ["roadwork-v1/images/w0.jpg"]
    assert not pseudo_labels(p, 0.8).any() and not pseudo_labels(p, 0.5, ["drum"]).any()
    with pytest.raises(DataError, match="not work-zone classes"):
        pseudo_labels(p, 0.5, ["none"])
    with pytest.raises(DataError, match="detector scores"):
        pseudo_labels({**p, "det_score": None}, 0.5)
    # it trains as a cone in every model whose fold does not hold it
    plain = finetune_fold(p, "b", tmp_path / "plain", epochs=1, batch_size=4, workers=0, device="cpu",
                          log=lambda _: None)
    with_pseudo = finetune_fold(p, "b", tmp_path / "pseudo", epochs=1, batch_size=4, workers=0, device="cpu",
                                pseudo_floor=0.5, log=lambda _: None)
    assert with_pseudo["pseudo_labels"] == {"floor": 0.5, "classes": list(PSEUDO_CLASSES), "crops": 1}
    assert with_pseudo["train_crops_by_class"]["cone"] == plain["train_crops_by_class"]["cone"] + 1
    assert plain["pseudo_labels"]["crops"] == 0


def test_bags_are_the_candidates_of_each_road_work_image(pack: tuple) -> None:
    from workzone_train.verifier_tune import positive_bags, read_crop_pack

    items, path, _ = pack
    p = read_crop_pack(path)
    everything = np.ones(len(p["labels"]), bool)
    bags = positive_bags(p, everything)
    keys = [{items[p["owner"][r]].key for r in bag} for bag in bags]
    # c0 (a cone on a boxed cone) and w0 (an unboxed cone) are road-work images; n0 and the German scene are not
    assert keys == [{"roadwork-v1/images/c0.jpg"}, {"roadwork-v1/images/w0.jpg"}]
    assert all(p["scored"][bag].all() for bag in bags)
    # a fold's rows are left out of its bags
    assert positive_bags(p, p["image"] != "roadwork-v1/images/w0.jpg") == bags[:1]


def test_the_bag_loss_is_minus_the_log_of_each_bags_best_work_zone_probability() -> None:
    from workzone_train.verifier import VERIFIER_CLASSES
    from workzone_train.verifier_tune import bag_loss

    none = VERIFIER_CLASSES.index("none")
    logits = torch.zeros(3, len(VERIFIER_CLASSES), requires_grad=True)
    with torch.no_grad():
        logits[0, none] = 4.0  # crop 0: almost surely none
        logits[1, none] = 1.0  # crop 1, same bag: less sure
        logits[2, none] = -2.0  # crop 2, its own bag: a work-zone class, surely
    loss = bag_loss(logits, torch.tensor([0, 0, 1]), 2)
    p_work = 1 - torch.softmax(logits.detach(), 1)[:, [none, VERIFIER_CLASSES.index("sign_other")]].sum(1)
    assert float(loss) == pytest.approx(float(-(torch.log(p_work[1]) + torch.log(p_work[2])) / 2), rel=1e-5)
    loss.backward()
    # only each bag's best crop learns; in bag 0 that is crop 1, pushed away from none
    assert float(logits.grad[0].abs().sum()) == 0.0 and float(logits.grad[1, none]) > 0


def test_a_fold_trains_with_the_bag_loss_of_road_work_images_outside_it(pack: tuple, tmp_path: Path) -> None:
    from workzone.errors import DataError
    from workzone_train.verifier_tune import finetune_fold, read_crop_pack

    _, path, _ = pack
    p = read_crop_pack(path)
    summary = finetune_fold(p, "b", tmp_path / "mil", epochs=1, batch_size=4, workers=0, device="cpu",
                            mil_weight=1.0, mil_bags=2, log=lambda _: None)
    assert summary["mil"] == {"weight": 1.0, "bags": 2, "bags_per_step": 2}
    assert (tmp_path / "mil" / "b-probs.npz").exists()
    with pytest.raises(DataError, match="each crop's image"):
        finetune_fold({**p, "image": None}, "b", tmp_path / "old", epochs=1, mil_weight=1.0, device="cpu",
                      log=lambda _: None)
