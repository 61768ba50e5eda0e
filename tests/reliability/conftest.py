"""Fixtures of the reliability suite: the tiny classifier and live loopback servers of the server
tests, and the decode bombs (built once per session)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from server_support import build_tiny_classifier, live_servers  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reliability-models")
    build_tiny_classifier(folder / "tiny.onnx")
    return folder


@pytest.fixture(scope="session")
def bomb_inputs() -> dict[str, bytes]:
    from tests.reliability.corpus import bombs

    return bombs()


@pytest.fixture
def live_server() -> Iterator[Any]:
    """Factory: ``live_server(pipeline=..., **settings)`` -> started LiveServer, stopped after the test."""
    pytest.importorskip("fastapi")
    yield from live_servers()
