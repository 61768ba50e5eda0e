"""Acceptance: a batch job killed with SIGKILL mid-run and rerun gives exactly one row per input,
the same rows as an uninterrupted run; a corrupt and a missing file give one error row each."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.batch._support import batch_command, comparable, make_image_folder, read_jsonl, run_batch, subprocess_env

N_IMAGES = 40


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    make_image_folder(root / "shots", N_IMAGES)
    (root / "shots" / "day0" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "list.txt").write_text("# extra inputs\nshots/day1/img001.jpg\nshots/gone.jpg\n")
    return root


def _args(root: Path, out: Path) -> list[str]:
    # Small batches and chunks so the kill lands between many commits.
    return [str(root / "shots"), str(root / "list.txt"), "--out", str(out), "--batch-size", "2",
            "--chunk-rows", "2", "--decode-workers", "2", "--progress-interval", "0.5"]


def _committed_rows(out: Path) -> list[dict]:
    parts = out.with_name(out.name + ".parts")
    return [json.loads(line) for chunk in sorted(parts.glob("chunk-*.jsonl"))
            for line in chunk.read_text(encoding="utf-8").splitlines()]


def test_sigkill_then_rerun_gives_each_row_exactly_once(job: Path) -> None:
    killed_out = job / "killed.jsonl"
    proc = subprocess.Popen(batch_command(*_args(job, killed_out)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(_committed_rows(killed_out)) < 6:  # mid-run: some chunks are committed, most rows are not
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk was committed within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not killed_out.exists()  # killed before the results file was written
    before = len(_committed_rows(killed_out))
    assert before < N_IMAGES + 2

    rerun = run_batch(*_args(job, killed_out))
    assert rerun.returncode == 0, rerun.stderr
    assert f"({N_IMAGES + 2 - before} new this run" in rerun.stderr

    clean_out = job / "clean.jsonl"
    clean = run_batch(*_args(job, clean_out))
    assert clean.returncode == 0, clean.stderr

    resumed, uninterrupted = read_jsonl(killed_out), read_jsonl(clean_out)
    paths = [r["path"] for r in resumed]
    assert len(paths) == len(set(paths)) == N_IMAGES + 2  # the list's duplicate of img001 is one input
    committed = [r["key"] for r in _committed_rows(killed_out)]
    assert len(committed) == len(set(committed)) == N_IMAGES + 2  # exactly once on disk, not just after dedup
    assert [comparable(r) for r in resumed] == [comparable(r) for r in uninterrupted]

    errors = {Path(r["path"]).name: r["error"] for r in resumed if r["error"]}
    assert set(errors) == {"corrupt.jpg", "gone.jpg"}
    assert "no such file" in errors["gone.jpg"]
    assert all(r["probability"] is None and r["label"] is None for r in resumed if r["error"])
    assert all(0.0 <= r["probability"] <= 1.0 for r in resumed if not r["error"])


def test_rerun_of_a_finished_job_decides_nothing_again(job: Path) -> None:
    out = job / "twice.jsonl"
    assert run_batch(*_args(job, out)).returncode == 0
    first = read_jsonl(out)
    again = run_batch(*_args(job, out))
    assert again.returncode == 0, again.stderr
    assert "(0 new this run, 2 errors)" in again.stderr
    assert read_jsonl(out) == first
