"""`workzone train objects-oof`: a LOSO run's fold detectors re-run at another input size through the runtime's
detector, each on the images of the sources it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_lookalikes_and_verifier import lookalike_root  # noqa: F401 - the fixture
from tests.training.test_object_detector_data import corpus_root  # noqa: F401 - lookalike_root's fixture
from workzone_train.scene_synth import OBJECT_CLASSES

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

FOLDS = {"a": ("TraCon",), "b": ("CamVid", "nexar-eduardo", "gtsdb_scenes", "WMaia9-workzone")}
SIDECAR = {"input_size": 96, "stride": 8, "class_names": list(OBJECT_CLASSES), "source_max_side": 80,
           "source_jpeg_quality": 72, "decision": {"version": 1, "features": ["max_any"], "bias": 0.0, "weights": [1.0]}}


def _state(seed: int) -> dict:
    from workzone_train.detector import build_detector

    torch.manual_seed(seed)
    net = build_detector(pretrained=False, num_classes=len(OBJECT_CLASSES))
    # A flat heat map at a level of its own per fold: every cell a peak, in torch and onnxruntime alike (on a nearly
    # flat random map the peak suppression's near-ties fall differently in the two, and the export check refuses it).
    with torch.no_grad():
        net.head_heat[1].weight.zero_()
        net.head_heat[1].bias.fill_(-1.0 + seed)
    return {k: v.half() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def states() -> dict:
    return {"a": _state(0), "b": _state(1)}


def _run(root: Path, states: dict, path: Path, size: int = 64) -> dict[str, np.ndarray]:
    from workzone_train.fold_detect import fold_detections_at
    from workzone_train.oof_scores import read_fold_detections

    torch.save(states, path.with_suffix(".pt"))
    fold_detections_at(root, path.with_suffix(".pt"), size=size, out=path, folds=FOLDS, sidecar=SIDECAR)
    return read_fold_detections(path)


def test_each_fold_detects_only_its_own_sources_with_its_own_weights(lookalike_root: Path, states: dict,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    from workzone_train.corpus import load_corpus
    from workzone_train.oof_scores import detection_input_size

    got = _run(lookalike_root, states, tmp_path / "d.json.gz")
    corpus = load_corpus(lookalike_root)
    assert set(got) == {s.key for s in corpus if any(s.source in v for v in FOLDS.values())}
    assert detection_input_size(tmp_path / "d.json.gz") == 64
    assert all(d.shape[1] == 6 and (d[:, :4] >= 0).all() and (d[:, :4] <= 1).all() for d in got.values())
    assert sum(len(d) for d in got.values()) > 0
    swapped = _run(lookalike_root, {"a": states["b"], "b": states["a"]}, tmp_path / "s.json.gz")
    tracon = [s.key for s in corpus if s.source == "TraCon"]
    assert any(not np.array_equal(got[k], swapped[k]) for k in tracon)  # fold a's weights scored TraCon
    again = _run(lookalike_root, states, tmp_path / "r.json.gz")
    assert all(np.array_equal(got[k], again[k]) for k in got)


def test_a_fold_without_weights_is_named(lookalike_root: Path, states: dict, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(KeyError, match="no weights for fold"):
        _run(lookalike_root, {"a": states["a"]}, tmp_path / "m.json.gz")


def test_the_command_writes_the_packed_file_of_the_five_folds(lookalike_root: Path, states: dict,  # noqa: F811
                                                              tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from workzone.cli.main import app
    from workzone_train.object_train import LOSO_FOLDS
    from workzone_train.oof_scores import read_fold_detections

    (tmp_path / "side.json").write_text(json.dumps(SIDECAR))
    args = ["train", "objects-oof", "--data", str(lookalike_root), "--fold-states", str(tmp_path / "fold_states.pt"),
            "--out", str(tmp_path / "o.json.gz"), "--sidecar", str(tmp_path / "side.json")]
    torch.save({"a": states["a"]}, tmp_path / "fold_states.pt")
    res = CliRunner().invoke(app, args + ["--size", "65"])
    assert res.exit_code != 0 and "multiple of 32" in res.output
    res = CliRunner().invoke(app, args + ["--size", "64"])
    assert res.exit_code != 0 and "no weights for fold" in res.output and not (tmp_path / "o.json.gz").exists()
    torch.save({f: states["ab"[i % 2]] for i, f in enumerate(LOSO_FOLDS)}, tmp_path / "fold_states.pt")
    res = CliRunner().invoke(app, args + ["--size", "64"])
    assert res.exit_code == 0, res.output
    assert len(read_fold_detections(tmp_path / "o.json.gz")) == int(res.output.split(" images")[0].split()[-1])


def test_tile_windows_cover_the_image_and_overlap() -> None:
    from workzone_train.fold_detect import tile_windows

    assert tile_windows(640, 480, 1) == [(0, 0, 640, 480)]
    for grid in (2, 3):
        wins = tile_windows(1000, 700, grid, overlap=0.2)
        assert len(wins) == grid * grid
        covered = np.zeros((700, 1000), bool)
        for x0, y0, x1, y1 in wins:
            assert 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 700
            covered[y0:y1, x0:x1] = True
        assert covered.all()
        # neighbours share a strip: an object cut by one window's edge is whole in the next
        (ax0, _, ax1, _), (bx0, _, bx1, _) = wins[0], wins[1]
        assert bx0 < ax1 and (ax1 - bx0) >= 0.15 * (ax1 - ax0)
    with pytest.raises(ValueError):
        tile_windows(100, 100, 0)


def test_tiled_detections_are_in_the_whole_images_coordinates(lookalike_root: Path, states: dict,  # noqa: F811
                                                               tmp_path: Path) -> None:
    from workzone_train.fold_detect import fold_detections_at
    from workzone_train.oof_scores import read_fold_detections

    torch.save(states, tmp_path / "s.pt")
    fold_detections_at(lookalike_root, tmp_path / "s.pt", size=64, out=tmp_path / "t.json.gz", folds=FOLDS,
                       sidecar=SIDECAR, tiles=2)
    whole = _run(lookalike_root, states, tmp_path / "w.json.gz")
    tiled = read_fold_detections(tmp_path / "t.json.gz")
    assert set(tiled) == set(whole)
    boxes = np.concatenate([d for d in tiled.values() if len(d)])
    assert (boxes[:, :4] >= 0).all() and (boxes[:, :4] <= 1).all()
    # windows in the right and lower halves put boxes there: the offsets were added back
    assert boxes[:, 0].max() > 0.5 and boxes[:, 1].max() > 0.5
    assert any(not np.array_equal(whole[k], tiled[k]) for k in whole)


def test_union_keeps_an_object_seen_twice_once() -> None:
    from workzone_train.fold_detect import union_detections

    first = np.array([[0.1, 0.1, 0.2, 0.3, 0.6, 0], [0.5, 0.5, 0.6, 0.6, 0.4, 5]])
    second = np.array([[0.11, 0.1, 0.21, 0.3, 0.9, 0],   # the same cone, seen closer: dropped
                       [0.11, 0.1, 0.21, 0.3, 0.7, 1],   # same place, other class: kept
                       [0.8, 0.8, 0.9, 0.9, 0.5, 0]])    # a cone only the closer look found: kept
    got = union_detections(first, second)
    assert got.shape == (4, 6)
    assert list(got[:, 4]) == [0.7, 0.6, 0.5, 0.4]  # by falling score
    assert union_detections(first, np.zeros((0, 6))).shape == (2, 6)
    assert union_detections(np.zeros((0, 6)), second).shape == (3, 6)
