"""Candidates named by eye: the labels file's checks, the sheets' join, and the crop table taking the names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.test_lookalikes_and_verifier import lookalike_root  # noqa: F401 - the fixture
from tests.training.test_object_detector_data import corpus_root  # noqa: F401 - the fixture
from workzone.errors import DataError
from workzone_train.hand_labels import collect_hand_labels, label_of, read_hand_labels
from workzone_train.scene_synth import OBJECT_CLASSES

HEADER = "key,x1,y1,x2,y2,label\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_label_names_the_region_it_overlaps_and_unsure_names_nothing(tmp_path: Path) -> None:
    labels = read_hand_labels(_write(tmp_path / "l.csv", HEADER + "a.jpg,0.1,0.1,0.2,0.3,drum\n"
                                                                  "a.jpg,0.5,0.5,0.6,0.7,unsure\n"))
    assert label_of(labels, "a.jpg", (0.1, 0.1, 0.2, 0.3)) == "drum"
    assert label_of(labels, "a.jpg", (0.105, 0.11, 0.2, 0.31)) == "drum"  # another run's box of the same object
    assert label_of(labels, "a.jpg", (0.15, 0.2, 0.25, 0.4)) == ""  # a neighbour, overlapping a little
    assert label_of(labels, "a.jpg", (0.5, 0.5, 0.6, 0.7)) == ""  # unsure: kept in the file, never learnt from
    assert label_of(labels, "b.jpg", (0.1, 0.1, 0.2, 0.3)) == ""


@pytest.mark.parametrize("row, says", [("a.jpg,0.1,0.1,0.2,0.3,barrel\n", "label 'barrel'"),
                                       ("a.jpg,0.3,0.1,0.2,0.3,cone\n", "not x1 < x2"),
                                       ("a.jpg,0.1,x,0.2,0.3,cone\n", "four numbers")])
def test_a_bad_row_is_refused_with_its_line(tmp_path: Path, row: str, says: str) -> None:
    with pytest.raises(DataError, match=f"l.csv:3: .*{says}"):
        read_hand_labels(_write(tmp_path / "l.csv", HEADER + "a.jpg,0.1,0.1,0.2,0.3,cone\n" + row))
    with pytest.raises(DataError, match="missing column"):
        read_hand_labels(_write(tmp_path / "m.csv", "key,label\na.jpg,cone\n"))
    with pytest.raises(DataError, match="no hand-labels file"):
        read_hand_labels(tmp_path / "absent.csv")


def test_collecting_joins_ids_with_the_manifest_and_refuses_conflicts(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "manifest.csv", "id,key,source,x1,y1,x2,y2,height_px,det_class,det_score\n"
                                                  "000-00,b.jpg,S,0.1,0.1,0.2,0.3,20,cone,0.5\n"
                                                  "000-01,a.jpg,S,0.4,0.1,0.5,0.3,20,drum,0.5\n")
    one = _write(tmp_path / "one.csv", "id,label\n000-00,cone\n")
    two = _write(tmp_path / "two.csv", "id,label\n000-01,unsure\n")
    out = tmp_path / "labels.csv"
    assert collect_hand_labels(manifest, [one, two], out) == {"unsure": 1, "cone": 1}
    assert out.read_text().splitlines() == ["key,x1,y1,x2,y2,label", "a.jpg,0.4,0.1,0.5,0.3,unsure",
                                            "b.jpg,0.1,0.1,0.2,0.3,cone"]
    assert set(read_hand_labels(out)) == {"a.jpg", "b.jpg"}
    with pytest.raises(DataError, match="labelled twice"):
        collect_hand_labels(manifest, [one, _write(tmp_path / "three.csv", "id,label\n000-00,drum\n")], out)
    with pytest.raises(DataError, match="not in"):
        collect_hand_labels(manifest, [_write(tmp_path / "four.csv", "id,label\n009-09,cone\n")], out)


def test_the_crop_table_takes_a_hand_label_only_where_no_real_box_or_negative_image_decides(
        lookalike_root: Path, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    from workzone_train.verifier import build_crop_table, items_digest

    cone = OBJECT_CLASSES.index("cone")
    dets = {"roadwork-v1/images/n0.jpg": np.array([[0.1, 0.1, 0.2, 0.3, 0.6, cone]]),  # an image without road work
            "roadwork-v1/images/w0.jpg": np.array([[0.4, 0.4, 0.5, 0.6, 0.7, cone]])}  # road work, nothing boxed
    labels = read_hand_labels(_write(tmp_path / "l.csv", HEADER + "roadwork-v1/images/w0.jpg,0.4,0.4,0.5,0.6,drum\n"
                                                                  "roadwork-v1/images/n0.jpg,0.1,0.1,0.2,0.3,cone\n"))
    plain = build_crop_table(lookalike_root, dets, OBJECT_CLASSES, props_per_source=1)
    named = build_crop_table(lookalike_root, dets, OBJECT_CLASSES, props_per_source=1, hand_labels=labels)
    cand = {it.key: it.label for it in named if it.kind == "candidate"}
    assert cand == {"roadwork-v1/images/w0.jpg": "drum", "roadwork-v1/images/n0.jpg": "none"}
    assert {it.key: it.label for it in plain if it.kind == "candidate"}["roadwork-v1/images/w0.jpg"] == ""
    assert items_digest(plain) != items_digest(named)  # a verifier run packed with the labels is told apart
