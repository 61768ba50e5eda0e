"""The schema is the parser and ``dump_pipeline`` its inverse: every shipped pipeline, every stage kind's
example and a tuned pipeline come back from a round trip unchanged (routers, engines and all)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from workzone.errors import ConfigError
from workzone.config.loader import builtin_pipeline_path, builtin_pipelines, dump_pipeline, parse_pipeline
from workzone.stages.registry import get_stage_class, list_stages

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_FILES = sorted((ROOT / "pipelines").glob("*.yaml")) + [builtin_pipeline_path(n) for n in builtin_pipelines()]


def _round_trip(text: str, filename: str) -> None:
    cfg = parse_pipeline(text, filename)
    dumped = dump_pipeline(cfg)
    again = parse_pipeline(dumped, f"{filename} (dumped)")
    assert again == cfg
    assert dump_pipeline(again) == dumped  # the written form is stable too


def test_every_pipeline_folder_is_covered():
    assert len(PIPELINE_FILES) >= 5 and any(p.name == "seven-tier.yaml" for p in PIPELINE_FILES)


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_pipeline_survives_a_round_trip(path: Path):
    _round_trip(path.read_text(encoding="utf-8"), str(path))


def test_seven_tier_keeps_its_engines_after_a_round_trip():
    cfg = parse_pipeline(dump_pipeline(parse_pipeline((ROOT / "pipelines" / "seven-tier.yaml").read_text())))
    engines = {st.name: st.engine for t in cfg.tiers for st in t.stages if st.engine is not None}
    assert len(engines) == 2
    assert any(e.quantization == "fp8" for e in engines.values())


def _doc_stage_examples() -> list[tuple[str, dict]]:
    """Every stage entry (a YAML list item with a ``kind``) shown in docs/stages/*.md."""
    found = []
    for doc in sorted((ROOT / "docs" / "stages").glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S):
            data = yaml.safe_load(block)
            if isinstance(data, list):
                found += [(f"{doc.name}:{e['name']}", e) for e in data if isinstance(e, dict) and "kind" in e]
    return found


def _written(key: str, value: object) -> object:
    """A ``tiny:NAME`` placeholder (built by the contract test) as a user would write it in a file."""
    if isinstance(value, str) and value.startswith("tiny:"):
        return "http://127.0.0.1:8000/v1" if key == "base_url" else f"models/{value.removeprefix('tiny:')}"
    return value


def _kind_examples() -> list[tuple[str, dict]]:
    out = []
    for kind in list_stages():
        cls = get_stage_class(kind)
        if isinstance(cls.tiny_params, dict):
            entry = {"name": "s", "kind": kind, **{k: _written(k, v) for k, v in cls.tiny_params.items()}}
            if cls.runs_on == "engine":  # an engine kind's serving options travel with it
                entry["engine"] = {"quantization": "fp8", "servers": ["vllm"]}
            out.append((f"{kind} (tiny_params)", entry))
    return out + _doc_stage_examples()


@pytest.mark.parametrize("entry", [e for _, e in _kind_examples()], ids=[n for n, _ in _kind_examples()])
def test_every_stage_kind_example_survives_a_round_trip(entry: dict):
    stage = {**entry, "timeout_s": 3, "cost": 1.5}
    text = yaml.safe_dump({"name": "one-kind", "tiers": [{"name": "t", "stages": [stage],
                                                          "exit": {"lower": 0.1, "upper": 0.9}}]})
    _round_trip(text, f"example of {entry['kind']}")


ROUTED = """
name: routed
deadline_s: 2.5
tiers:
  - name: fast
    stages:
      - {name: a, kind: test_redness, gain: 2}
    exit: {lower: 0.05, upper: 0.95}
  - name: closer
    stages:
      - {name: b, kind: test_redness, timeout_s: 4, device: cpu}
      - {name: c, kind: test_redness, enabled: false}
    route:
      rules:
        - {z: [-0.5, .inf], stages: [b], reason: unsure}
        - {z: [-2, 2], disagree: true, stages: [b, c]}
"""


def test_tune_keeps_what_it_did_not_fit():
    import tests.stages_fixtures  # noqa: F401 - registers test_redness
    from workzone.tuning import tune_scores

    cfg = parse_pipeline(ROUTED, "routed.yaml")
    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.integers(0, 2, 80)]
    scores = [{n: float(rng.normal(2 * y - 1, 1)) for n in ("a", "b", "c")} for y in labels]
    tuned = tune_scores(cfg, scores, labels, {"a": 1.0, "b": 10.0, "c": 20.0}).config
    again = parse_pipeline(dump_pipeline(tuned), "tuned.yaml")
    assert again == tuned
    assert again.tiers[1].route == cfg.tiers[1].route  # the router it did not fit
    assert again.deadline_s == 2.5 and again.tiers[1].stages[0].timeout_s == 4
    assert again.tiers[1].stages[1].enabled is False
    assert again.tiers[0].stages[0].params.gain == 2
    assert again.tiers[1].fusion.fitted and again.tuning["n"] == 80  # and what it did fit


POOLED = """
name: pooled
tiers:
  - name: first
    stages: [{name: a, kind: test_redness}]
  - name: second
    stages: [{name: b, kind: test_redness}]
    fusion: {stages: [b]}
"""


def test_a_tier_that_names_its_pooled_stages_is_fitted_on_those_alone():
    import tests.stages_fixtures  # noqa: F401 - registers test_redness
    from workzone.tuning import tune_scores

    cfg = parse_pipeline(POOLED, "pooled.yaml")
    rng = np.random.default_rng(1)
    labels = [int(v) for v in rng.integers(0, 2, 120)]
    scores = [{n: float(rng.normal(2 * y - 1, 1)) for n in ("a", "b")} for y in labels]
    tuned = tune_scores(cfg, scores, labels, {"a": 1.0, "b": 10.0}).config
    assert set(tuned.tiers[0].fusion.weights) == {"a"}
    assert set(tuned.tiers[1].fusion.weights) == {"b"}  # a stays out of the second tier's answer
    again = parse_pipeline(dump_pipeline(tuned), "tuned.yaml")
    assert again == tuned and again.tiers[1].fusion.stages == ("b",)


@pytest.mark.parametrize("fusion, message", [
    ("{stages: [z]}", "fusion stages must name"),
    ("{stages: []}", "fusion stages must name"),
    ("{stages: [b], weights: {a: 1.0}}", "leave out"),
])
def test_pooled_stages_must_be_stages_so_far(fusion: str, message: str):
    import tests.stages_fixtures  # noqa: F401 - registers test_redness

    with pytest.raises(ConfigError, match=message):
        parse_pipeline(POOLED.replace("fusion: {stages: [b]}", f"fusion: {fusion}"), "pooled.yaml")


def test_an_untuned_tier_averages_only_its_pooled_stages():
    from workzone.config.schema import FusionParams
    from workzone.fusion.pooling import pool_log_odds

    scores = {"a": -3.0, "b": 2.0}
    assert pool_log_odds(scores, FusionParams()) == pytest.approx(-0.5)
    assert pool_log_odds(scores, FusionParams(stages=("b",))) == pytest.approx(2.0)
    assert pool_log_odds({"a": -3.0, "b": None}, FusionParams(stages=("b",))) == pytest.approx(0.0)
