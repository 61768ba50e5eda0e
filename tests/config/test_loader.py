import pytest

import tests.stages_fixtures  # noqa: F401 - registers the test stage kinds
from workzone.config.loader import dump_pipeline, load_pipeline_config, parse_pipeline
from workzone.errors import ConfigError, UnknownStageKind

GOOD = """
name: demo
tiers:
  - name: fast
    stages:
      - name: red
        kind: test_redness
        gain: 3
    exit: {lower: 0.1, upper: 0.9}
  - name: slow
    stages:
      - {name: red2, kind: test_redness, timeout_s: 2}
    fusion: {bias: 0.5, weights: {red: 1.0, red2: 2.0}, fitted: true}
"""


def test_good_pipeline_parses_with_typed_params():
    cfg = parse_pipeline(GOOD)
    st = cfg.tiers[0].stages[0]
    assert st.kind == "test_redness" and st.params.gain == 3
    assert cfg.tiers[1].stages[0].timeout_s == 2
    assert cfg.tiers[1].fusion.weights == {"red": 1.0, "red2": 2.0}


def test_dump_round_trips():
    cfg = parse_pipeline(GOOD)
    again = parse_pipeline(dump_pipeline(cfg))
    assert again == cfg


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("gain: 3", "gian: 3"), r"demo.yaml:8: stage 'red' \(kind test_redness\): gian: unknown key"),
        (GOOD.replace("gain: 3", "gain: lots"), r"stage 'red' \(kind test_redness\): gain: .*got 'lots'"),
        (GOOD.replace("kind: test_redness\n", "kind: nope\n", 1), r"demo.yaml:6: stage 'red': unknown stage kind 'nope'"),
        (GOOD.replace("lower: 0.1", "lower: 0.95"), r"demo.yaml:9: tiers.0.exit: .*must not be above upper"),
        (GOOD.replace("upper: 0.9", "upper: 1.5"), r"tiers.0.exit.upper: .*less than or equal to 1"),
        (GOOD.replace("name: fast", "name: fast\n    colour: blue"), r"demo.yaml:5: tiers.0.colour: unknown key"),
        (GOOD.replace("red2, kind", "red, kind"), r"demo.yaml:12: stage 'red': tiers.1.stages.0.name: .*used twice"),
        (GOOD.replace("red2: 2.0", "ghost: 2.0"), r"demo.yaml:13: tiers.1.fusion.weights.ghost: tier 'slow': .*'ghost'"),
        (GOOD.replace("timeout_s: 2", "timeout_s: -1"), r"stage 'red2': tiers.1.stages.0.timeout_s"),
        ("tiers: [", r"^demo.yaml:1: not valid YAML: .*expected the node content"),
        ("name: x\n  bad: [1\n", r"^demo.yaml:2: not valid YAML"),
        ("", "empty"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("name: x\ntiers: []\n", "at least 1"),
    ],
)
def test_bad_pipelines_name_file_line_stage_and_key(text, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_pipeline(text, "demo.yaml")


def test_unknown_kind_is_its_own_type_and_lists_known_kinds():
    with pytest.raises(UnknownStageKind) as info:
        parse_pipeline(GOOD.replace("kind: test_redness\n", "kind: nope\n", 1))
    assert "onnx_classifier" in str(info.value)


def test_load_by_path_and_missing(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(GOOD)
    cfg, path = load_pipeline_config(p)
    assert cfg.name == "demo" and path == p
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="built-in"):
        load_pipeline_config("no-such-builtin")


def test_pipelines_default_yaml_is_the_packaged_default():
    """``pipelines/default.yaml`` (what docs and users open) and the packaged built-in ``default`` are one file."""
    from pathlib import Path

    from workzone.config.loader import builtin_pipeline_path

    repo_copy = Path(__file__).resolve().parents[2] / "pipelines" / "default.yaml"
    assert repo_copy.read_bytes() == builtin_pipeline_path("default").read_bytes(), (
        "pipelines/default.yaml and src/workzone/pipelines/default.yaml differ: `workzone tune` writes one, "
        "copy it over the other")
