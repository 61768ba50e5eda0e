"""workzone.answer: one function shapes the public answer, the response model describes exactly that
shape, and the server, the CLI, batch rows and the miner's explanation all come from it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

import tests.stages_fixtures  # noqa: F401 - registers test_redness and test_failing
from workzone.answer import DecisionResponse, public_answer
from workzone.api import load_pipeline
from workzone.types import Decision

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "roadwork_cambridge_drawn.jpg"
SECRET = "no answer from http://10.1.2.3:8000/v1"  # what a failing backend's message may name


def _pipeline(name: str, *stages: str) -> str:
    """A one-tier pipeline of ``stages`` and a stage that always fails, naming a backend in its message."""
    listed = "".join(f"      - {{{st}}}\n" for st in (*stages, f'name: fail, kind: test_failing, message: "{SECRET}"'))
    return f"name: {name}\ntiers:\n  - name: first\n    stages:\n{listed}"


SMALL = _pipeline("answer-shape", "name: red, kind: test_redness")
# The shipped object path: sign OCR and the ten-class detector.
REAL = _pipeline("answer-real", "name: signs, kind: sign_ocr",
                 "name: objects, kind: roadwork_detector, model: builtin:roadwork_objects.onnx, score_threshold: 0.05")


def _described(answer: dict[str, Any]) -> None:
    """The answer validates against the response model and dumps back unchanged (no key added or lost)."""
    as_json = json.loads(json.dumps(answer))
    assert DecisionResponse.model_validate(answer).model_dump(mode="json") == as_json
    assert SECRET not in json.dumps(answer)


def _sign_scene() -> np.ndarray | None:
    from tests.stages.test_sign_ocr import _font_path, _scene

    return _scene(["ROAD", "WORK", "AHEAD"]) if _font_path() else None


def test_real_decisions_with_evidence_failures_and_abstentions_match_the_response_model(tmp_path: Path):
    pytest.importorskip("rapidocr_onnxruntime")
    (tmp_path / "real.yaml").write_text(REAL)
    images: list[Any] = [SAMPLE, np.full((240, 320, 3), 90, np.uint8)]
    sign = _sign_scene()
    if sign is not None:
        images.append(sign)
    with load_pipeline(tmp_path / "real.yaml") as pipe:
        decisions = pipe.predict_batch(images)
        decisions.append(pipe.service.prior_decision("late.jpg", "the deadline passed before the image was decoded"))
    answers = [public_answer(d) for d in decisions]
    for a in answers:
        _described(a)
    stages = [s for a in answers for s in a["stages"]]
    # What the cases cover: boxes, abstentions, a failed stage (degraded, its error type only), the prior.
    assert any(s["evidence"]["boxes"] for s in stages if s["stage"] == "objects")
    assert any(s["log_odds"] is None and s["error"] is None and s["probability"] is None for s in stages)
    assert all(s["error"] == "RuntimeError" and s["log_odds"] is None for s in stages if s["stage"] == "fail")
    assert all(a["degraded"] and "fail (RuntimeError)" in a["degraded_reason"] for a in answers[:-1])
    assert answers[-1]["stages"] == [] and answers[-1]["degraded"] and answers[-1]["reason"] == "deadline"
    assert [a["label"] for a in answers] == [d.label for d in decisions]
    assert all(a["label_name"] == ("roadwork" if a["label"] else "none") for a in answers)
    if sign is not None:  # sign text with its box, as the OCR stage read it
        texts = answers[2]["stages"][0]["evidence"]["texts"]
        assert texts and all(len(t["box"]) == 4 for t in texts if t["box"] is not None)


def test_the_response_model_refuses_a_shape_the_function_does_not_make():
    answer = public_answer(Decision(0.2, 0, "fast", (), (0.2,), 1.0, 1.0))
    _described(answer)
    with pytest.raises(ValueError, match="extra"):
        DecisionResponse.model_validate({**answer, "error_type": "RuntimeError"})
    with pytest.raises(ValueError, match="label"):
        DecisionResponse.model_validate({k: v for k, v in answer.items() if k != "label"})


def _jpeg(path: Path) -> Path:
    PILImage.fromarray(np.full((40, 48, 3), (210, 30, 30), np.uint8)).save(path, "JPEG")
    return path


def _without_timing(answer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in answer.items() if k not in ("latency_ms", "source")}
    out["stages"] = [{k: v for k, v in s.items() if k != "latency_ms"} for s in answer["stages"]]
    return out


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The small pipeline, a red image, and the public answer the API gives for it."""
    (tmp_path / "small.yaml").write_text(SMALL)
    image = _jpeg(tmp_path / "red.jpg")
    with load_pipeline(tmp_path / "small.yaml") as pipe:
        answer = public_answer(pipe.predict(image))
    _described(answer)
    assert answer["stages"][1]["error"] == "RuntimeError" and answer["label"]
    return tmp_path / "small.yaml", image, answer


def test_cli_json_is_the_public_answer(small):
    from typer.testing import CliRunner

    from workzone.cli.main import app

    pipeline, image, answer = small
    res = CliRunner().invoke(app, ["detect", str(image), "-p", str(pipeline), "--json"])
    line = json.loads(res.output.strip().splitlines()[-1])
    _described(line)
    assert _without_timing(line) == _without_timing(answer) and line["source"] == str(image)


def test_server_answers_are_the_public_answer(small):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    import httpx

    from tests.server.server_support import LiveServer

    pipeline, image, answer = small
    srv = LiveServer(pipeline=str(pipeline)).start()
    try:
        one = httpx.post(srv.url + "/v1/detect", files={"image": ("red.jpg", image.read_bytes(), "image/jpeg")})
        many = httpx.post(srv.url + "/v1/detect/batch", files=[("images", ("red.jpg", image.read_bytes(),
                                                                          "image/jpeg"))])
    finally:
        srv.stop()
    assert one.status_code == 200 and many.status_code == 200, (one.text, many.text)
    for got in (one.json(), many.json()["results"][0]["decision"]):
        _described(got)
        assert _without_timing(got) == _without_timing(answer)


def test_batch_rows_and_the_miner_explanation_are_read_from_the_public_answer(small, tmp_path: Path):
    from workzone.batch.inputs import expand_inputs
    from workzone.batch.local import run_local
    from workzone.batch.store import ResultStore

    pipeline, image, answer = small
    store = ResultStore([tmp_path / "out.jsonl"], {"pipeline": "answer-shape"})
    store.open()
    items = expand_inputs([image])
    with load_pipeline(pipeline) as pipe:
        run_local(pipe, items, store, batch_size=2, decode_workers=1, fps=None)
        decision = pipe.predict(image)
    (row,) = store.finalize({it.file_id for it in items})
    assert json.loads(row["stage_errors"]) == {"fail": "RuntimeError"}  # the type, never the message
    assert json.loads(row["stage_scores"]) == {s["stage"]: None if s["probability"] is None
                                               else round(s["probability"], 6) for s in answer["stages"]}
    assert (row["probability"], row["label"], row["exit_tier_name"]) == (answer["probability"], answer["label"],
                                                                         answer["exit_tier_name"])
    pytest.importorskip("pydantic_settings")
    from workzone.miner.service import explain

    notes = [n for s in answer["stages"] for n in s["evidence"]["notes"]]
    assert explain(decision) == "; ".join(notes) and SECRET not in explain(decision)


def test_public_answer_is_json_native():
    buf = io.StringIO()
    answer = public_answer(Decision(0.9, 1, "late", (), (0.4, 0.9), 2.0, 3.0, routes=("late: ran x",)))
    json.dump(answer, buf)  # no default=: tuples are lists, every value a JSON type
    assert json.loads(buf.getvalue()) == answer and answer["routes"] == ["late: ran x"]


def _keys(answer: dict[str, Any]) -> tuple:
    """The answer's shape: its keys, each stage's keys and each stage's evidence keys."""
    return (tuple(answer), tuple(tuple(s) for s in answer["stages"]),
            tuple(tuple(s["evidence"]) for s in answer["stages"]))


def test_every_surface_gives_the_same_keys_for_the_same_decision(small, tmp_path: Path):
    """CLI JSON, the HTTP body and a `workzone batch` JSON Lines row, for one image through one pipeline."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    import httpx
    from typer.testing import CliRunner

    from tests.server.server_support import LiveServer
    from workzone.batch.rows import COLUMNS
    from workzone.cli.main import app

    pipeline, image, answer = small
    cli = CliRunner().invoke(app, ["detect", str(image), "-p", str(pipeline), "--json"])
    cli_answer = json.loads(cli.output.strip().splitlines()[-1])
    srv = LiveServer(pipeline=str(pipeline)).start()
    try:
        http_answer = httpx.post(srv.url + "/v1/detect",
                                 files={"image": ("red.jpg", image.read_bytes(), "image/jpeg")}).json()
    finally:
        srv.stop()
    out = tmp_path / "rows.jsonl"
    res = CliRunner().invoke(app, ["batch", str(image), "-p", str(pipeline), "--out", str(out)])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]

    # The two answers: the keys the response model declares, in the one function's order, nested alike.
    declared = tuple(DecisionResponse.model_fields)
    assert _keys(cli_answer) == _keys(http_answer) == _keys(answer) and tuple(cli_answer) == declared
    assert _without_timing(cli_answer) == _without_timing(http_answer)
    # The batch row: flat columns (one schema for Parquet and JSON Lines); those the answer names hold its
    # values, the per-stage columns are keyed by the answer's stage names.
    assert tuple(row) == COLUMNS
    shared = [k for k in COLUMNS if k in declared]
    assert shared == ["probability", "label", "exit_tier", "exit_tier_name", "reason", "latency_ms"]
    assert {k: row[k] for k in shared if k != "latency_ms"} == {k: cli_answer[k] for k in shared if k != "latency_ms"}
    assert list(json.loads(row["stage_scores"])) == sorted(s["stage"] for s in cli_answer["stages"])
    assert json.loads(row["stage_errors"]) == {s["stage"]: s["error"] for s in cli_answer["stages"] if s["error"]}
