"""workzone bench on the CPU: inputs, the estimate arithmetic, and a short real run writing its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import build_tiny_classifier
from workzone.throughput.inputs import sample_images, synth_jpegs
from workzone.throughput.runs import Row
from workzone.cli.bench import add_estimates
from workzone.cli.main import app
from workzone.io.images import decode_image

REPO = Path(__file__).resolve().parents[2]


def test_synthesised_jpegs_are_distinct_decodable_and_sized():
    blobs = synth_jpegs(6, (224, 224), sources=sample_images(REPO / "samples"))
    assert len(set(blobs)) == 6
    assert {decode_image(b).pixels.shape for b in blobs} == {(224, 224, 3)}
    assert synth_jpegs(2, (32, 24), seed=3) == synth_jpegs(2, (32, 24), seed=3)


def _row(name: str, per_s: float, notes: str) -> Row:
    return Row(name, "cpu", "224", 16, int(per_s * 10), 10.0, 1.0, 1.0, notes=notes)


def test_estimate_recovers_the_tier_costs():
    # t1 = 1 ms, t2 = 10 ms: early exit at 10 % costs 2 ms/image (500/s), all tiers 11 ms (90.9/s).
    rows = [_row("pipeline 'p' from JPEG bytes", 500.0, "10% of images went past tier 1"),
            _row("pipeline 'p' from JPEG bytes, every tier on every image", 1000 / 11, "100% of images went past tier 1")]
    add_estimates(rows, 0.30)
    assert rows[-1].name.endswith("estimated at 30% past tier 1")
    assert rows[-1].images_per_s == pytest.approx(1000 / (1 + 3), rel=0.01)


@pytest.mark.slow
def test_bench_cpu_writes_markdown_and_json(tmp_path):
    model = build_tiny_classifier(tmp_path / "tiny.onnx")
    pipe = tmp_path / "tiny.yaml"
    pipe.write_text(f"name: tiny\ntiers:\n- name: t\n  stages:\n  - {{name: c, kind: onnx_classifier, model: {model}}}\n"
                    "  exit: {lower: 0.3, upper: 0.7}\n- name: t2\n  stages:\n"
                    f"  - {{name: c2, kind: onnx_classifier, model: {model}, flip: true}}\n")
    out = tmp_path / "bench.md"
    res = CliRunner().invoke(app, ["bench", "--size", "64", "--images", "8", "--seconds", "0.2", "--batch", "4",
                                   "--cascade-batch", "4", "-p", str(pipe), "--model", str(model),
                                   "--samples", str(REPO / "samples"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.with_suffix(".json").read_text())
    names = [r["name"] for r in data["rows"]]
    assert "onnxruntime classifier from JPEG bytes" in names
    assert any(n.endswith("every tier on every image") for n in names)
    assert all(r["images_per_s"] > 0 for r in data["rows"] if not math.isnan(r["batch_ms_p50"]))
    assert data["machine"]["cores"] and "load average (1 min)" in data["machine"]
    assert "| run | device |" in out.read_text()


def test_pipeline_rows_state_their_time_against_the_bare_session():
    from workzone.cli.bench import add_session_ratios

    rows = [Row("object detector, bare onnxruntime session (inputs ready)", "cpu", "dev", 8, 100, 2.0, 1, 1),
            Row("pipeline 'default' from JPEG bytes", "cpu", "dev", 8, 80, 2.0, 1, 1, notes="0% past"),
            Row("pipeline 'default' from JPEG bytes", "cpu", "other", 8, 80, 2.0, 1, 1)]
    add_session_ratios(rows)
    assert rows[1].notes.endswith("1.25x the bare detector session's time per image")
    assert rows[2].notes == ""  # no session row for that input


def test_pipeline_rows_state_both_floors_and_never_the_scheme_before():
    from workzone.cli.bench import add_session_ratios

    rows = [Row("object detector, bare onnxruntime session (inputs ready)", "cpu", "dev", 8, 50, 2.0, 1, 1,
                notes="runs of 4 (the scheme before issue 23)"),
            Row("object detector, bare onnxruntime session (inputs ready)", "cpu", "dev", 8, 100, 2.0, 1, 1),
            Row("object detector + verifier, bare onnxruntime sessions (inputs and crops ready)", "cpu", "dev", 8, 60,
                2.0, 1, 1),
            Row("pipeline 'default' from JPEG bytes", "cpu", "dev", 8, 40, 2.0, 1, 1)]
    add_session_ratios(rows)
    assert rows[3].notes == ("2.50x the bare detector session's time per image; "
                             "1.50x the bare detector + verifier sessions' time per image")


DATA = REPO.parent / "shared" / "data" / "roadwork-v1"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "manifest.csv").is_file(), reason="needs roadwork-v1")
def test_the_bare_sessions_are_the_pipelines_own_and_the_verifier_sees_the_images_that_reach_it():
    from workzone.throughput.parity import OPERATOR_SCHEME, dev_jpegs
    from workzone.throughput.runs import sessions_only

    blobs = [b for _, b in dev_jpegs(DATA, limit=8)]
    det = sessions_only(blobs, "dev", "default", batch=4, seconds=0.1, verifier=False)
    both = sessions_only(blobs, "dev", "default", batch=4, seconds=0.1, verifier=True)
    before = sessions_only(blobs, "dev", "default", batch=4, seconds=0.1, verifier=False, scheme=OPERATOR_SCHEME)
    assert det.images_per_s > 0 and both.images_per_s > 0 and before.images_per_s > 0
    assert det.notes.startswith("runs of 1 image(s) over") and "one onnxruntime thread each" in det.notes
    assert before.notes.endswith("intra-op threads (the scheme before issue 23)")
    reached, total = (int(v) for v in both.notes.split("the verifier on the ")[1].split(" images")[0].split(" of "))
    assert total == 8 and 0 < reached <= 8 and "crops)" in both.notes


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "manifest.csv").is_file(), reason="needs roadwork-v1")
def test_the_default_decides_the_same_bits_by_image_as_by_operator():
    # A spread of dev image sizes here; benchmarks/cpu_parity.py runs all 469 (bench_cpu.md quotes it).
    from workzone.throughput.parity import cpu_scheme_parity, dev_jpegs

    report, before, now = cpu_scheme_parity(dev_jpegs(DATA, limit=40))
    assert report.n == 40 and report.flips == 0
    assert np.array_equal(before, now)


def test_the_http_rows_read_what_the_server_refused_from_its_log():
    """The refusal lines a workzone server logs (RefusalLog, Admission.strike, ClientCosts) are counted by
    the limit that refused; lines read once are not counted again."""
    import logging
    import tempfile

    from workzone.client_costs import ClientCosts
    from workzone.server.admission import Admission, RefusalLog
    from workzone.throughput.http import Served

    log = tempfile.TemporaryFile()
    handler = logging.StreamHandler(open(log.fileno(), "w", closefd=False, buffering=1))
    loggers = [logging.getLogger(n) for n in ("workzone.access", "workzone.client_costs")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        served = Served("http://127.0.0.1:1", log)
        admission = Admission(max_inflight=1, max_held_bytes=2**20, max_uploads_per_client=1, free_strikes=1)
        refusals = RefusalLog(per_s=1000)
        scope = {"method": "POST", "path": "/v1/detect"}
        admission.begin_upload("a")
        for _ in range(2):
            try:
                admission.begin_upload("a")
            except Exception as exc:  # noqa: BLE001 - the Overloaded to log
                refusals.refused(429, "overloaded", "a", scope, f"before the body: {exc}")
        admission.strike("a")
        admission.strike("a")
        costs = ClientCosts(costly_image_s=0.2)
        costs.charge(["x"] * 16, [1] * 16, 16 * 0.03)
        costs.charge(["b"], [1], 2.0)
        first = served.refusals()
        assert first == {"429 overloaded: uploads per client": 2, "penalty begun": 1,
                         "client moved to the costly lane": 1}, first
        assert served.refusals() == {}
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def test_http_rows_name_the_gil_switch_interval_the_server_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydantic_settings")
    from workzone.throughput.http import _interval, _switch_interval_ms

    monkeypatch.delenv("WORKZONE_GIL_SWITCH_MS", raising=False)
    assert _switch_interval_ms("cuda") == pytest.approx(0.5)
    assert _switch_interval_ms("cpu") is None
    assert _interval(None).endswith("ms (Python's)")
    monkeypatch.setenv("WORKZONE_GIL_SWITCH_MS", "0.1")  # the child reads the same environment
    assert _switch_interval_ms("cpu") == pytest.approx(0.1)
    assert _interval(_switch_interval_ms("cuda")) == "0.1 ms"


def test_http_load_from_several_client_processes_sends_every_request_once(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from workzone.throughput.http import http_latency

    build_tiny_classifier(tmp_path / "tiny.onnx")
    (tmp_path / "tiny.yaml").write_text("name: tiny\ndeadline_s: 5\ntiers:\n  - name: fast\n    stages:\n"
                                        "      - name: clf\n        kind: onnx_classifier\n        model: tiny.onnx\n")
    monkeypatch.setenv("WORKZONE_ENGINE_PROCESS", "1")  # the served child inherits it, and the row says so
    blobs = synth_jpegs(4, (64, 48), seed=1)
    row = http_latency(blobs, "64x48", pipeline=str(tmp_path / "tiny.yaml"), device="cpu", rate=40, seconds=1.5,
                       addresses=4, clients=2)
    answers = row.stages["answers"]
    # 60 requests were due; the two processes sent the odd and the even ones, each exactly once.
    assert sum(answers.values()) == 60 and answers.get("200") == 60
    assert row.images == 60
    assert "in 2 client processes" in row.notes and "cascade in an engine process" in row.notes
