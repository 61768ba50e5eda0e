"""Fixtures for the miner tests: the tiny classifier and test stages of the server tests, pipeline
files, and a local metagraph object. The axon tests (test_axon.py) also need bittensor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("pydantic_settings")

# Reuse the server tests' helpers (tiny ONNX classifier, the test_sleep stage, JPEG maker).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from miner_support import slow_tier  # noqa: E402
from server_support import build_tiny_classifier, write_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("miner-models")
    build_tiny_classifier(folder / "tiny.onnx")
    return folder


@pytest.fixture(scope="session")
def pipelines(model_dir: Path) -> dict[str, Path]:
    """fast: one ONNX tier; sleepy: tier 2 sleeps 30 s; failing: tier 2 raises."""
    return {
        "fast": write_pipeline(model_dir, "miner-fast"),
        "sleepy": write_pipeline(model_dir, "miner-sleepy", more_tiers=slow_tier(sleep_s=30.0), deadline_s=60),
        "failing": write_pipeline(model_dir, "miner-failing", more_tiers=slow_tier(fail=True)),
    }
