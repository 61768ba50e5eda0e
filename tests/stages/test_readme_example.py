"""The README's example stage kind, added with nothing but its own code, keeps the contract and runs in a pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.stages import test_contract
from workzone.api import Pipeline
from workzone.config.loader import parse_pipeline
from workzone.stages import registry

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_code() -> str:
    section = README.read_text(encoding="utf-8").split("## Add a stage kind", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture()
def brightness(monkeypatch):
    """The README block executed as written, registered in a fresh default registry (other tests never see it)."""
    monkeypatch.setattr(registry, "default_registry", registry.StageRegistry())
    namespace: dict = {}
    exec(compile(_example_code(), str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace["BrightnessStage"]


def test_the_example_keeps_the_stage_contract(brightness):
    assert "brightness" in registry.list_stages() and "onnx_classifier" in registry.list_stages()
    test_contract.test_kind_declares_what_it_needs("brightness")
    test_contract.test_unknown_param_is_rejected_by_name("brightness")


def test_the_example_runs_through_a_pipeline(brightness, tmp_path):
    config = parse_pipeline("name: bright\ntiers:\n  - name: only\n    stages:\n"
                            "      - {name: light, kind: brightness, gain: 8}\n", "bright.yaml")
    with Pipeline(config, tmp_path) as pipe:
        dark, light = pipe.predict_batch([np.full((32, 32, 3), 20, np.uint8), np.full((32, 32, 3), 235, np.uint8)])
    assert dark.probability < 0.1 and light.probability > 0.9 and light.label and not dark.label
    assert light.stages[0].kind == "brightness" and light.stages[0].evidence.notes == ("brightness",)
