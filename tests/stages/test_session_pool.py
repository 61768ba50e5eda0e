"""SessionPool: a batch's onnxruntime runs spread over worker threads by image, or one at a time over every thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_tiny_classifier
from workzone.errors import ModelFileError
from workzone.stages._onnx import SessionPool


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    return build_tiny_classifier(tmp_path / "tiny.onnx")


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(n)]


def _logits(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"image": x})[0]


def test_by_image_runs_go_to_the_one_thread_session_on_several_workers_and_keep_the_order(tiny: Path):
    pool = SessionPool(tiny, threads=2, parallel="images", inputs=["image"])
    try:
        seen: dict[str, set] = {"prepare": set(), "run": set()}
        sessions: set[int] = set()
        gate = threading.Barrier(2, timeout=10)  # both workers must be inside prepare at once, or this times out

        def prepare(x: np.ndarray) -> np.ndarray:
            seen["prepare"].add(threading.current_thread().name)
            if len(seen["prepare"]) <= 2:
                gate.wait()
            return x

        def run(session, x: np.ndarray) -> np.ndarray:
            seen["run"].add(threading.current_thread().name)
            sessions.add(id(session))
            return _logits(session, x)

        xs = _inputs(6)
        got = pool.map(prepare, run, xs)
        assert len(seen["prepare"]) == 2 and all(n.startswith("workzone-tiny") for n in seen["prepare"])
        assert sessions == {id(pool.narrow)}
        assert pool.narrow.get_session_options().intra_op_num_threads == 1
        assert pool.wide.get_session_options().intra_op_num_threads == 2
        # Same values, same order as one session run by run.
        assert [float(g[0]) for g in got] == [float(_logits(pool.wide, x)[0]) for x in xs]
        # A lone run takes the session over every thread (its latency would double on one).
        sessions.clear()
        pool.map(lambda x: x, run, xs[:1])
        assert sessions == {id(pool.wide)}
    finally:
        pool.close()


def test_by_operator_runs_one_at_a_time_on_the_caller_thread_over_every_thread(tiny: Path):
    pool = SessionPool(tiny, threads=2, parallel="operators", inputs=["image"])
    try:
        assert pool.narrow is None
        runners: set[str] = set()

        def run(session, x: np.ndarray) -> np.ndarray:
            runners.add(threading.current_thread().name)
            assert session is pool.wide
            return _logits(session, x)

        xs = _inputs(4)
        got = pool.map(lambda x: x, run, xs)
        assert runners == {threading.current_thread().name}
        assert [float(g[0]) for g in got] == [float(_logits(pool.wide, x)[0]) for x in xs]
        assert pool.map(lambda x: x, run, []) == []
    finally:
        pool.close()


def test_one_thread_has_no_second_session_and_a_missing_model_names_the_file(tiny: Path, tmp_path: Path):
    pool = SessionPool(tiny, threads=1, parallel="images")
    pool.close()
    assert pool.narrow is None and pool.threads == 1
    with pytest.raises(ModelFileError, match="missing.onnx does not exist"):
        SessionPool(tmp_path / "missing.onnx", threads=2)


def test_spatial_fixes_a_dynamic_graphs_free_height_and_width_with_the_same_outputs():
    pytest.importorskip("onnxruntime")
    from workzone.stages.base import StageContext
    from workzone.stages._onnx import open_session

    model = StageContext().resolve("builtin:roadwork_objects.onnx")
    free = open_session(model, threads=1)
    if not all(isinstance(d, str) for d in free.get_inputs()[0].shape[2:]):
        pytest.skip("the shipped detector has fixed axes")
    fixed = open_session(model, threads=1, spatial=64)
    assert fixed.get_inputs()[0].shape[1:] == [3, 64, 64]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    assert np.array_equal(free.run(None, {"image": x})[0], fixed.run(None, {"image": x})[0])
    # The runner fixes them at the size it feeds.
    from workzone.stages.roadwork_detector import ObjectDetectorRunner

    runner = ObjectDetectorRunner(model, threads=2)
    try:
        assert runner.sessions.wide.get_inputs()[0].shape[2:] == [runner.size] * 2
        assert runner.sessions.narrow.get_inputs()[0].shape[2:] == [runner.size] * 2
    finally:
        runner.close()
