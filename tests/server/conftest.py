"""Fixtures for the HTTP server tests (helpers live in server_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_support import build_tiny_classifier, live_servers  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_tiny_classifier(folder / "tiny.onnx")
    return folder


@pytest.fixture
def live_server() -> Iterator[Any]:
    """Factory: ``live_server(pipeline=..., **settings)`` -> started LiveServer, stopped after the test."""
    yield from live_servers()
