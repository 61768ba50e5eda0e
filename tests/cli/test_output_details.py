"""What a user reads and gets: tiers counted from 1, a per-image time, files that honour the umask,
messages that stay one line in a log, and no base64 in a batch job's missing-file row."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from tests.cli.test_cli import setup  # noqa: F401 - the tiny pipeline and manifest fixture
from workzone.cli.main import app

runner = CliRunner()


def test_detect_numbers_tiers_from_1_and_prints_a_per_image_time(setup):  # noqa: F811
    tmp, pipe = setup
    res = runner.invoke(app, ["detect", str(tmp / "img1.png"), str(tmp / "img2.png"), "-p", str(pipe),
                              "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    head = next(ln for ln in res.output.splitlines() if "img1.png" in ln)
    assert "decided after tier 1 'whole'" in head or "decided after tier 2 'tiles'" in head
    assert "ms per image, 2 decided together in" in head
    row = next(ln for ln in res.output.splitlines() if ln.startswith("cls "))
    assert row.split()[1] == "1"  # the stage table's tier column


def test_output_files_honour_the_umask(setup):  # noqa: F811
    tmp, pipe = setup
    old = os.umask(0o022)
    try:
        res = runner.invoke(app, ["eval", str(tmp / "manifest.csv"), "-p", str(pipe), "--out", str(tmp / "r.json")])
        assert res.exit_code == 0, res.output
        assert (tmp / "r.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        from workzone.io.atomic import atomic_write_text

        atomic_write_text(tmp / "x.txt", "x")
        assert (tmp / "x.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_an_error_off_a_terminal_is_one_line_however_long(tmp_path):
    csv = tmp_path / ("a-rather-long-file-name-for-a-manifest-of-every-source" * 3 + ".csv")
    res = subprocess.run([sys.executable, "-m", "workzone.cli.main", "eval", str(csv)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 200 and lines[0].startswith("error: ")


def test_a_missing_file_in_a_batch_is_named_without_base64(tmp_path):
    import json

    from tests.batch._support import make_image_folder
    from workzone.batch import BatchOptions, run_batch_job

    make_image_folder(tmp_path / "shots", 1)
    (tmp_path / "list.txt").write_text("shots/missing.jpg\n")
    run_batch_job([str(tmp_path / "list.txt")], [tmp_path / "r.jsonl"], options=BatchOptions())
    (row,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert row["error"].endswith("missing.jpg: no such file") and "base64" not in row["error"]


def test_list_stages_shows_the_two_new_detector_kinds():
    res = runner.invoke(app, ["list-stages"])
    assert res.exit_code == 0 and {"dfine", "yolo_world"} <= set(res.output.split())


def test_the_batch_summary_off_a_terminal_is_not_cut_at_80_columns(tmp_path):
    from tests.batch._support import batch_command, make_image_folder, subprocess_env

    make_image_folder(tmp_path / "shots", 2)
    out = tmp_path / ("results-with-a-long-name-" * 3 + ".jsonl")
    res = subprocess.run(batch_command(str(tmp_path / "shots"), "--out", str(out)), capture_output=True, text=True,
                         env=subprocess_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    done = next(ln for ln in res.stderr.splitlines() if ln.startswith("batch done:"))
    assert done.endswith("new rows/s")  # one line, not wrapped before its last words
    assert any(ln == f"results: {out}" for ln in res.stderr.splitlines())
