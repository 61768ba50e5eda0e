"""The shipped default pipeline on real images of the development set (dev split)."""

import math
import re

import pytest

import workzone
from workzone.evaluation.runner import build_report, run_manifest
from workzone.io.sources import read_manifest
from tests.browser import _browser, artifacts, browser_page  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev_report():
    from tests.conftest import DATA

    if not (DATA / "manifest.csv").is_file():
        pytest.skip("../shared/data/roadwork-v1 is not beside the repository")
    rows = read_manifest(DATA / "manifest.csv", splits=["dev"])
    with workzone.load_pipeline("default") as pipe:
        result = run_manifest(pipe, rows, batch_size=16)
        report = build_report(result, [t.name for t in pipe.config.tiers], pipe.config.name)
        tuned_mcc = pipe.config.tuning["mcc"]
    return result, report, tuned_mcc


def test_default_reaches_the_reported_dev_mcc(dev_report):
    result, report, tuned_mcc = dev_report
    assert report["overall"]["n"] == 469
    # Floor against regressions. The shipped default (partial-hpe, chosen by leave-one-source-out; balanced fusion)
    # scores 0.942; the 0.95 is met only by the source-learning partial-hp default (0.952): see MODEL_CARD.md.
    assert report["overall"]["mcc"] >= 0.92
    # The tuner replays the cascade on the same images: the live cascade must agree with it.
    assert report["overall"]["mcc"] == pytest.approx(tuned_mcc, abs=0.01)


def test_at_most_half_of_dev_goes_past_tier_1(dev_report):
    _, report, _ = dev_report
    assert report["past_tier_1"] <= 0.5
    assert report["past_tier_1"] > 0.0  # the closer look does run on the ambiguous images


def test_every_probability_is_finite_and_in_range(dev_report):
    result, _, _ = dev_report
    assert all(d is not None and math.isfinite(d.probability) and 0 <= d.probability <= 1 for d in result.decisions)


def test_shipped_negative_sample_is_decided_correctly():
    from tests.conftest import REPO

    with workzone.load_pipeline("default") as pipe:
        neg = pipe.predict(REPO / "samples" / "no_roadwork_cambridge.jpg")
    assert not neg.label and neg.probability < 0.1


def test_shipped_positive_sample_is_decided_correctly():
    """The drawn lane closure on a dev CamVid street (samples/make_drawn_sample.py) is road work."""
    from tests.conftest import REPO

    with workzone.load_pipeline("default") as pipe:
        pos = pipe.predict(REPO / "samples" / "roadwork_cambridge_drawn.jpg")
    assert pos.label and pos.probability > 0.9


@pytest.mark.xfail(strict=True, reason="known miss of the partial-hpe default (p ~0.37; classifier 0.38, cones 0.74, "
                                       "the tier-2 fusion fitted on dev says no): see MODEL_CARD.md, Known misses. "
                                       "strict: a model that fixes it must remove this mark")
def test_known_miss_san_antonio_work_zone(roadwork_data):
    with workzone.load_pipeline("default") as pipe:
        pos = pipe.predict(roadwork_data / "images" / "wmaia9-workzone" / "san_antonio_f0247.jpg")
    # The evidence leans to road work even though the fused decision does not.
    assert {r.stage: r.probability for r in pos.stages}["cones"] > 0.5
    assert pos.label


def test_html_report_of_the_dev_split_is_small_offline_and_renders(dev_report, browser_page, artifacts, tmp_path):
    """The acceptance run of `workzone report` on the dev split, from the same evaluation."""
    pytest.importorskip("matplotlib")
    from tests.conftest import DATA
    from workzone.config.loader import load_pipeline_config
    from workzone.evaluation.records import records_from_eval
    from workzone.evaluation.report import write_report

    result, _, _ = dev_report
    config, _ = load_pipeline_config("default")
    out = write_report(tmp_path / "dev.html", records_from_eval(result, DATA), base=DATA, tuning=config.tuning,
                       tier_names=[t.name for t in config.tiers], title="default on dev")
    assert out.stat().st_size < 10 * 1024 * 1024
    page = browser_page.page
    page.route(re.compile(r"^https?://"), lambda route: route.abort())
    page.goto(out.as_uri())
    figures = page.locator("figure.plot")
    assert figures.count() == 9
    for k in range(figures.count()):
        box = figures.nth(k).locator("svg").first.bounding_box()
        assert box and box["width"] > 150 and box["height"] > 100
    assert page.locator("figure.card svg.evidence image").count() >= 4  # the San Antonio misses, false alarms
    page.screenshot(path=str(artifacts / "report_dev.png"), full_page=True)
    assert browser_page.errors == []
