"""benchmarks/gpu_stage_profile.py on the CPU (CI has no GPU): every step timed, and the exactness check run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks import load_script

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def _script():
    return load_script("gpu_stage_profile")


def test_the_profile_times_each_step_and_checks_the_compiled_pixels(tmp_path):
    # 400 px: larger than the detector's source_max_side (320), so the shrink runs too. In process, so that a
    # treatment graph compiled by another test of this session is reused (a compile costs ~30 s on 2 cores).
    out = tmp_path / "profile.md"
    text = _script().main(["--device", "cpu", "--size", "400", "--batch", "2", "--repeats", "1",
                           "--samples", str(REPO / "samples"), "--out", str(out)])
    assert out.read_text() == text
    assert "- Machine: " in text and "load average" in text
    for step in ("| decode |", "| stack to one uint8 batch |", "| shrink (Lanczos 400x400 -> 320x320) |",
                 "| JPEG round trip (q72) |", "| letterbox to 384", "| steps 2-5 as inputs(), eager |",
                 "| steps 2-5 as inputs(), compiled treatment |", "| detector network |",
                 "| box decoding + decision |", "| detect() + to_host, eager treatment |",
                 "| detect() + to_host, compiled treatment |"):
        row = next((ln for ln in text.splitlines() if ln.startswith(step)), None)
        assert row is not None, f"no row {step!r}:\n{text}"
        assert "skipped" not in row and float(row.split("|")[2]) > 0  # timed
    assert "Exactness: compiled vs eager treatment: max abs diff 0 pixel levels" in text
    assert "detector inputs: max abs diff 0." in text


def test_a_spent_budget_skips_the_steps_and_says_so(tmp_path):
    text = _script().main(["--device", "cpu", "--size", "64", "--batch", "2", "--repeats", "1", "--seconds", "0",
                           "--samples", str(REPO / "samples")])
    assert "| decode | - | - | - | skipped: past the --seconds budget |" in text
    assert "Exactness" not in text and "Total run" in text


def test_a_failed_compile_is_reported_not_compared(tmp_path, monkeypatch):
    # On the H100 inductor failed and the path ran eager: the profile must say so, not "max abs diff 0".
    import torch

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    text = _script().main(["--device", "cpu", "--size", "64", "--batch", "2", "--repeats", "1",
                           "--samples", str(REPO / "samples")])
    row = next(ln for ln in text.splitlines() if ln.startswith("| steps 2-5 as inputs(), compiled treatment |"))
    assert "no compiler here" in row and "first call" in row
    assert "Exactness: not compared: the compiled treatment fell back to eager" in text
    assert "max abs diff" not in text
    detect_row = next(ln for ln in text.splitlines() if ln.startswith("| detect() + to_host, compiled treatment |"))
    assert "fell back to eager" in detect_row
