"""``workzone schema``: the pipeline JSON Schema built from the registry accepts the shipped pipelines
and refuses what the loader refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from workzone.cli.main import app
from workzone.config.json_schema import pipeline_json_schema, pipeline_schema_model
from workzone.stages.registry import list_stages

REPO = Path(__file__).resolve().parents[2]
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


@pytest.fixture(scope="module")
def model():
    return pipeline_schema_model()


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_shipped_pipelines_match_the_schema(model, path):
    model.model_validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("stage, key", [
    ({"name": "c", "kind": "onnx_classifier", "modle": "x.onnx"}, "modle"),
    ({"name": "c", "kind": "no_such_kind"}, "kind"),
    ({"name": "c", "kind": "onnx_classifier", "tiles": "many"}, "tiles"),
])
def test_schema_refuses_what_the_loader_refuses(model, stage, key):
    with pytest.raises(ValidationError) as err:
        model.model_validate({"tiers": [{"name": "t", "stages": [stage]}]})
    assert key in str(err.value)


def test_schema_has_one_entry_per_registered_kind_and_is_valid_json_schema():
    schema = pipeline_json_schema()
    mapping = schema["$defs"]["Tier"]["properties"]["stages"]["items"]["discriminator"]["mapping"]
    assert sorted(mapping) == list_stages()
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((REPO / "pipelines" / "default.yaml").read_text()), schema)


def test_schema_command_writes_it(tmp_path):
    res = CliRunner().invoke(app, ["schema", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "workzone pipeline"
