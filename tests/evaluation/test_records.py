from pathlib import Path

import pytest

from workzone.errors import DataError
from workzone.evaluation.records import condition_of, join_truth, normalise_record, read_records, resolve_image_path
from workzone.io.sources import ManifestRow


@pytest.mark.parametrize("extra, expected", [
    ({"condition": "rain"}, "rain"),
    ({"notes": "dashcam Cambridge; dusk sequence"}, "low light"),
    ({"notes": "Night drive"}, "low light"),
    ({"notes": "stock photo"}, "daylight"),
    ({}, None),
])
def test_condition_of(extra, expected):
    assert condition_of(extra) == expected


def test_batch_row_is_normalised():
    rec = normalise_record({"path": "a.jpg", "probability": 0.7, "label": True, "exit_tier": "fast",
                            "stage_scores": {"classifier": 0.7, "signs": None}})
    assert rec["exit_tier_name"] == "fast" and rec["exit_tier"] is None
    assert [s["stage"] for s in rec["stages"]] == ["classifier", "signs"]
    assert rec["stages"][1]["probability"] is None and rec["stages"][0]["evidence"]["boxes"] == []
    assert "truth" not in rec  # a batch row's label is the decision, not the truth


def test_detect_json_line_is_accepted():
    rec = normalise_record({"source": "x/b.png", "probability": 0.2, "stages": [
        {"stage": "c", "probability": 0.2, "evidence": {"boxes": []}}], "true_label": 1})
    assert rec["path"] == "x/b.png" and rec["truth"] == 1
    assert rec["stages"][0]["evidence"] == {"boxes": [], "texts": [], "notes": []}


@pytest.mark.parametrize("raw, match", [
    ({"probability": 0.5}, "needs 'path'"),
    ({"path": "a", "probability": 1.5}, "in \\[0, 1\\]"),
    ({"path": "a", "probability": "high"}, "in \\[0, 1\\]"),
])
def test_bad_rows_are_refused(raw, match):
    with pytest.raises(DataError, match=match):
        normalise_record(raw, "f.jsonl:3")


def test_read_records_errors_name_the_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "none.jsonl")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no prediction rows"):
        read_records(empty)
    listy = tmp_path / "l.jsonl"
    listy.write_text('{"path": "a", "probability": 0.1}\n[1, 2]\n')
    with pytest.raises(DataError, match="l.jsonl:2: expected a JSON object"):
        read_records(listy)


def test_join_truth_by_relative_or_absolute_path(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    rows = [ManifestRow(tmp_path / "a.jpg", 1, "src1", "dev", {"notes": "dusk"}),
            ManifestRow(tmp_path / "b.jpg", 0, "src2", "dev", {})]
    recs = [normalise_record({"path": "a.jpg", "probability": 0.9}),
            normalise_record({"path": str(tmp_path / "b.jpg"), "probability": 0.1}),
            normalise_record({"path": "c.jpg", "probability": 0.1})]
    assert join_truth(recs, rows, tmp_path) == 2
    assert (recs[0]["truth"], recs[0]["source"], recs[0]["condition"]) == (1, "src1", "low light")
    assert (recs[1]["truth"], recs[1]["source"]) == (0, "src2")
    assert "truth" not in recs[2]


def test_resolve_image_path(tmp_path, monkeypatch):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "in_base.jpg").write_bytes(b"x")
    (tmp_path / "in_cwd.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"
    assert resolve_image_path("in_base.jpg", base) == base / "in_base.jpg"
    assert resolve_image_path("in_cwd.jpg", base) == (tmp_path / "in_cwd.jpg").resolve()
    assert resolve_image_path("gone.jpg", base) == base / "gone.jpg"
    assert resolve_image_path(str(tmp_path / "x.jpg"), base) == Path(tmp_path / "x.jpg")
