"""Tests for workzone.routing: rules, the state read from evidence, fitting, and routing inside the cascade."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import tests.stages_fixtures  # noqa: F401 - registers the test stage kinds
from tests.conftest import solid
from workzone.answer import public_answer
from workzone.cascade import Cascade
from workzone.config.loader import parse_pipeline
from workzone.errors import ConfigError
from workzone.io.images import decode_image
from workzone.routing import RouteRule, RouterConfig, choose_stages, fit_router, route_state
from workzone.types import Evidence, StageReport, TextRead

RED, BLUE, PINK = (solid(c) for c in [(250, 0, 0), (0, 0, 250), (150, 100, 120)])

ROUTED = """
name: routed
tiers:
  - name: first
    stages: [{name: a, kind: test_redness, gain: 1, cost: 5}]
    fusion: {weights: {a: 1.0}, fitted: true}
    exit: {lower: 0.001, upper: 0.999}
  - name: second
    stages: [{name: cheap, kind: test_redness, gain: 10, cost: 5}, {name: dear, kind: test_redness, gain: 40, cost: 50}]
    fusion: {weights: {a: 1.0, cheap: 1.0, dear: 1.0}, fitted: true}
    route:
      rules:
        - {z: [-0.5, 0.5], stages: [cheap, dear], reason: very unsure}
        - {z: [-5, 5], stages: [cheap], reason: a cheap look settles it}
        - {stages: [], reason: confident enough}
"""


def _report(name, z, texts=()):
    return StageReport(name, "k", 0, z, Evidence(texts=texts), 1.0)


def test_state_reads_disagreement_and_text_from_the_evidence():
    s = route_state(0.3, [_report("clf", 2.0), _report("cones", -1.5), _report("ocr", None, (TextRead("ROAD WORK", 0.9),))])
    assert s.disagree and s.text_seen and s.z == 0.3
    assert not route_state(0.3, [_report("clf", 2.0), _report("cones", -0.5)]).disagree


@pytest.mark.parametrize(("z", "disagree", "text", "expected"), [
    (0.0, False, False, ("ocr",)),
    (0.0, True, False, ("vlm",)),
    (0.0, False, True, ()),
    (9.0, False, False, ("vlm", "ocr")),   # no rule: the fixed order, in the tier's stage order
])
def test_first_matching_rule_wins(z, disagree, text, expected):
    router = RouterConfig(rules=(RouteRule(z=(-1, 1), disagree=True, stages=("vlm",)),
                                 RouteRule(z=(-1, 1), text_seen=True, stages=()),
                                 RouteRule(z=(-1, 1), stages=("ocr",))))
    state = route_state(z, [_report("a", 2.0), _report("b", -2.0)] if disagree else
                        [_report("c", None, (TextRead("x", 1.0),))] if text else [])
    assert choose_stages(router, state, ["vlm", "ocr"])[0] == expected


def test_fit_router_spends_only_where_it_pays():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    z_before = rng.normal(0, 3, n)
    base = z_before.copy()
    # Unsure images (|z| < 1) are settled by "good" (its term points the right way, strongly); "noise" is random.
    good = np.where(np.abs(z_before) < 1, np.where(y == 1, 5.0, -5.0), 0.0)
    noise = rng.normal(0, 0.1, n)
    base = np.where(np.abs(z_before) < 1, np.where(y == 1, -0.2, 0.2), base)  # unsure ones lean the wrong way
    r = fit_router(z_before, base, {"good": good, "noise": noise}, y, {"good": 10.0, "noise": 1.0},
                   lam=1e-4, edges=[-1.0, 1.0])
    assert [rule.stages for rule in r.rules] == [(), ("good",), ()]
    assert "good gains" in r.rules[1].reason
    # Priced out: at a huge lambda nothing runs anywhere.
    assert all(rule.stages == () for rule in fit_router(z_before, base, {"good": good}, y, {"good": 10.0},
                                                        lam=1e3, edges=[-1.0, 1.0]).rules)


def test_cascade_runs_the_routed_stages_only_and_reports_why():
    cfg = parse_pipeline(ROUTED)
    events = []
    c = Cascade.from_config(cfg)
    imgs = [decode_image(a) for a in (PINK, RED, BLUE)]
    decisions = asyncio.run(c.run(imgs, on_event=events.append))
    pink, red, blue = decisions
    # PINK: redness (150 - 120) / 255 = 0.12 -> z 0.12, very unsure: both stages.
    assert [s.stage for s in pink.stages] == ["a", "cheap", "dear"]
    assert pink.routes == ("second: ran cheap, dear (rule 1 (z 0.12 in [-0.5, 0.5)): very unsure)",)
    # RED: z 0.98, outside the exits, only the cheap stage; cost counts only what ran.
    assert [s.stage for s in red.stages] == ["a", "cheap"] and red.cost == 10.0
    assert "skipped dear" in red.routes[0] and "a cheap look settles it" in red.routes[0]
    assert [s.stage for s in blue.stages] == ["a", "cheap"]
    tier2 = [e for e in events if e.tier == 1]
    assert len(tier2) == 3 and all(e.route and e.route.startswith("second: ran") for e in tier2)
    assert all(e.route is None for e in events if e.tier == 0)
    assert public_answer(pink)["routes"] == list(pink.routes)


def test_route_naming_a_stage_outside_its_tier_is_refused():
    with pytest.raises(ConfigError, match="route names"):
        parse_pipeline(ROUTED.replace("stages: [cheap, dear], reason: very unsure", "stages: [a], reason: x"))
    with pytest.raises(ConfigError, match="lo < hi"):
        parse_pipeline(ROUTED.replace("z: [-0.5, 0.5]", "z: [0.5, -0.5]"))
