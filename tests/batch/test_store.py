"""ResultStore: atomic chunks, done keys, job identity, Ray parts, final files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workzone.batch.rows import error_row
from workzone.batch.store import ResultStore, read_results
from workzone.errors import ConfigError

JOB = {"pipeline": "p", "pipeline_sha1": "abc", "fps": 2.0, "identity": "stat"}


def _row(fid: str, path: str, frame=None, p=0.25, error=None) -> dict:
    key = f"{fid}:{'-' if frame is None else frame}"
    if error:
        return error_row(key, path, frame, None, error)
    return {"key": key, "path": path, "frame_index": frame, "timestamp_s": None if frame is None else frame / 2,
            "probability": p, "label": p > 0.5, "exit_tier": 0, "exit_tier_name": "fast", "reason": "confident",
            "stage_scores": "{}", "stage_errors": "{}", "evidence": "", "latency_ms": 1.0, "error": None}


def _store(tmp_path: Path, **kw) -> ResultStore:
    s = ResultStore([tmp_path / "out.jsonl"], JOB, **kw)
    s.open()
    return s


def test_rows_reach_disk_only_as_whole_chunks(tmp_path) -> None:
    s = _store(tmp_path, chunk_rows=3, chunk_seconds=1e9)
    s.add([_row("a", "/a.jpg"), _row("b", "/b.jpg")])
    assert not list(s.parts.glob("chunk-*"))
    s.add([_row("c", "/c.jpg")])
    [chunk] = s.parts.glob("chunk-*.jsonl")
    assert [json.loads(x)["key"] for x in chunk.read_text().splitlines()] == ["a:-", "b:-", "c:-"]
    assert not list(s.parts.glob(".*.tmp"))


def test_reopen_loads_done_keys_and_removes_leftover_temporaries(tmp_path) -> None:
    s = _store(tmp_path, chunk_seconds=1e9)
    s.add([_row("a", "/a.jpg"), _row("v", "/v.mp4", frame=4)])
    s.add([_row("x", "/x.jpg")])  # queued, not committed: a kill now would lose these rows
    (s.parts / ".chunk-00000009.jsonl.abc.partial").write_text('{"key": "half')  # what a killed write leaves
    again = ResultStore([tmp_path / "out.jsonl"], JOB)
    again.open()
    assert again.done == set() and not list(again.parts.glob(".*.partial"))
    s.flush()
    again.open()
    assert again.done == {"a:-", "v:4", "x:-"}


def test_a_different_job_is_refused_naming_what_differs(tmp_path) -> None:
    _store(tmp_path)
    other = ResultStore([tmp_path / "out.jsonl"], {**JOB, "fps": 5.0})
    with pytest.raises(ConfigError, match="differs in: fps.*--restart"):
        other.open()
    other.open(restart=True)
    assert other.done == set()


def test_retry_errors_redoes_error_rows_and_the_newest_row_wins(tmp_path) -> None:
    s = _store(tmp_path)
    s.add([_row("a", "/a.jpg", error="busy"), _row("b", "/b.jpg")])
    s.flush()
    retry = ResultStore([tmp_path / "out.jsonl"], JOB, retry_errors=True)
    retry.open()
    assert retry.done == {"b:-"}
    retry.add([_row("a", "/a.jpg", p=0.75)])
    rows = retry.finalize()
    assert [(r["path"], r["probability"], r["error"]) for r in rows] == [("/a.jpg", 0.75, None), ("/b.jpg", 0.25, None)]


def test_finalize_keeps_current_inputs_sorted_and_writes_both_formats(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    s = ResultStore([tmp_path / "out.parquet", tmp_path / "out.jsonl"], JOB)
    s.open()
    s.add([_row("v", "/v.mp4", frame=10), _row("old", "/a.jpg"), _row("v", "/v.mp4", frame=2), _row("n", "/a.jpg", p=0.9)])
    rows = s.finalize({"v", "n"})  # /a.jpg changed since: only its current identity "n" counts
    assert [(r["path"], r["frame_index"]) for r in rows] == [("/a.jpg", None), ("/v.mp4", 2), ("/v.mp4", 10)]
    assert read_results(tmp_path / "out.parquet") == read_results(tmp_path / "out.jsonl") == rows


def test_a_ray_part_cut_short_is_discarded_and_its_rows_redone(tmp_path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from workzone.batch.rows import arrow_schema

    s = _store(tmp_path)
    part = s.parts / "ray-1"
    part.mkdir()
    pq.write_table(pa.Table.from_pylist([_row("a", "/a.jpg")], schema=arrow_schema()), part / "ok.parquet")
    pq.write_table(pa.Table.from_pylist([_row("b", "/b.jpg")], schema=arrow_schema()), part / "cut.parquet")
    raw = (part / "cut.parquet").read_bytes()
    (part / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    s.open()
    assert s.done == {"a:-"}
    assert not (part / "cut.parquet").exists()


@pytest.mark.parametrize("name", ["out.csv", "out"])
def test_output_suffix_is_checked(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match="parquet or .jsonl"):
        ResultStore([tmp_path / name], JOB)
