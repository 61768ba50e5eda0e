"""``workzone eval --html`` and ``workzone report`` on a tiny real model and a synthetic labelled set,
then the report opened in Chromium (every plot rendered, evidence drawn, no network).

Screenshots land in ``test-artifacts/`` (see tests/browser.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from tests.browser import _browser, artifacts, browser_page  # noqa: F401 - fixtures
from workzone.cli.main import app
from workzone.config.loader import dump_pipeline, load_pipeline_config
from workzone.config.schema import ExitThresholds

pytest.importorskip("matplotlib")
runner = CliRunner()

PLOTS = {"roc", "pr", "reliability", "probabilities", "per-source", "per-condition", "funnel", "tradeoff", "latency"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A labelled set (reddish = road work; a few labels flipped so there are misses and false alarms),
    a two-tier pipeline with tiles (tile heat maps), tuned, then evaluated with --html and --predictions."""
    from tests.conftest import build_tiny_classifier

    tmp = tmp_path_factory.mktemp("report")
    model = build_tiny_classifier(tmp / "tiny.onnx")
    rng = np.random.default_rng(0)
    lines = ["path,label,source,split,notes"]
    for i in range(48):
        label = i % 2
        base = np.array([170, 90, 60]) if label else np.array([70, 90, 170])
        img = np.clip(base + rng.normal(0, 50, (48, 64, 3)), 0, 255).astype(np.uint8)
        PILImage.fromarray(img).save(tmp / f"img{i}.png")
        truth = 1 - label if i in (3, 10, 17, 30) else label
        source = "only-negatives" if truth == 0 and i % 3 == 0 else ("only-positives" if truth == 1 and i % 3 == 0
                                                                    else "mixed")
        notes = "dusk sequence" if i % 4 == 0 else "day"
        lines.append(f"img{i}.png,{truth},{source},dev,{notes}")
    (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    (tmp / "p.yaml").write_text(f"""
name: tiny
tiers:
  - name: whole
    stages: [{{name: cls, kind: onnx_classifier, model: {model.name}}}]
  - name: tiles
    stages: [{{name: tiles, kind: onnx_classifier, model: {model.name}, tiles: 2}}]
""")
    res = runner.invoke(app, ["tune", str(tmp / "manifest.csv"), "-p", str(tmp / "p.yaml"), "--out",
                              str(tmp / "tuned.yaml")])
    assert res.exit_code == 0, res.output
    # The tuner sends nothing to tier 2 here (tiles add nothing on flat colours): widen tier 1's exits so
    # uncertain images reach it and the report has tile evidence and a two-tier funnel.
    cfg, _ = load_pipeline_config(tmp / "tuned.yaml")
    tiers = (cfg.tiers[0].model_copy(update={"exit": ExitThresholds(lower=0.05, upper=0.95)}),) + cfg.tiers[1:]
    (tmp / "tuned.yaml").write_text(dump_pipeline(cfg.model_copy(update={"tiers": tiers})))
    res = runner.invoke(app, ["eval", str(tmp / "manifest.csv"), "-p", str(tmp / "tuned.yaml"), "--html",
                              str(tmp / "report.html"), "--predictions", str(tmp / "preds.jsonl")])
    assert res.exit_code == 0, res.output
    return {"dir": tmp, "html": tmp / "report.html", "preds": tmp / "preds.jsonl", "pipeline": tmp / "tuned.yaml"}


def test_eval_writes_one_record_per_image_with_evidence(evaluated):
    rows = [json.loads(x) for x in evaluated["preds"].read_text().splitlines()]
    assert len(rows) == 48
    r = rows[0]
    assert r["path"] == "img0.png" and r["truth"] == 0 and r["condition"] == "low light"
    assert r["image_size"] == [64, 48] and 0 <= r["probability"] <= 1
    assert r["stages"][0]["stage"] == "cls" and "evidence" in r["stages"][0]
    tiled = [s for row in rows for s in row["stages"] if s["stage"] == "tiles"]
    assert tiled and all(s["evidence"]["boxes"][0]["label"] == "roadwork-tile" for s in tiled)


def test_tune_records_the_cost_mcc_frontier(evaluated):
    cfg, _ = load_pipeline_config(evaluated["pipeline"])
    frontier = cfg.tuning["tradeoff"]
    assert len(frontier) == 12
    assert all(q["mean_cost_ms"] <= q["max_cost_ms"] + 0.01 for q in frontier)  # each within its budget
    assert frontier[-1]["mcc"] >= frontier[0]["mcc"] - 1e-9  # a bigger budget never scores worse


def test_report_is_one_offline_file_with_every_section(evaluated):
    text = evaluated["html"].read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", text)  # nothing to fetch: opens offline
    assert "<script" not in text
    found = set(re.findall(r'data-plot="([a-z-]+)"', text))
    assert found == PLOTS
    assert "specificity" in text and "only-negatives" in text  # one-class source scored by specificity
    assert "Worst misses" in text and "Worst false alarms" in text
    assert text.count("data:image/jpeg;base64,") >= 2
    assert evaluated["html"].stat().st_size < 10 * 1024 * 1024


def test_report_from_records_joins_labels_from_the_manifest(evaluated, tmp_path):
    # A `workzone batch`-style row: no truth, per-stage scores as a mapping, the exit tier by name.
    preds = [json.loads(x) for x in evaluated["preds"].read_text().splitlines()]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps({"path": str(evaluated["dir"] / p["path"]), "probability": p["probability"],
                                           "label": p["label"], "exit_tier": p["exit_tier_name"],
                                           "stage_scores": {s["stage"]: s["probability"] for s in p["stages"]}})
                               for p in preds) + "\n")
    out = tmp_path / "from_batch.html"
    res = runner.invoke(app, ["report", str(batch), "--manifest", str(evaluated["dir"] / "manifest.csv"),
                              "-p", str(evaluated["pipeline"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "48 of 48 records matched" in text and 'data-plot="roc"' in text and 'data-plot="per-source"' in text


def test_report_without_labels_says_how_to_get_metrics(evaluated, tmp_path):
    rows = [json.loads(x) for x in evaluated["preds"].read_text().splitlines()]
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "truth"}) for r in rows))
    out = tmp_path / "u.html"
    res = runner.invoke(app, ["report", str(unlabelled), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "--manifest" in text and 'data-plot="roc"' not in text and 'data-plot="probabilities"' in text


def test_records_without_tier_names_or_labels_are_numbered_from_1_and_claim_no_misses(evaluated, tmp_path):
    rows = [json.loads(x) for x in evaluated["preds"].read_text().splitlines()]
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k not in ("truth", "exit_tier_name")})
                              for r in rows))
    out = tmp_path / "bare.html"
    res = runner.invoke(app, ["report", str(bare), "--out", str(out)])
    assert res.exit_code == 0, res.output
    funnel = out.read_text().split('data-plot="funnel"')[1].split("</figure>")[0]
    assert ">tier 1<" in funnel and ">tier 2<" in funnel and ">0: 0<" not in funnel
    text = out.read_text()
    assert "<p>no misses</p>" not in text and "no true labels, so misses and false alarms cannot be told" in text


def test_the_report_gives_one_roc_auc_interval(evaluated):
    text = evaluated["html"].read_text()
    row = re.search(r"<td>ROC-AUC</td><td><b>([0-9.]+)</b></td><td>\[([0-9.]+), ([0-9.]+)\]", text)
    assert row, "headline ROC-AUC row"
    legend = text.split('data-plot="roc"')[1].split("</figure>")[0]
    assert f"ROC-AUC {row[1]} [{row[2]}, {row[3]}]" in legend  # the plot's legend quotes the table's interval


def test_per_source_numbers_sit_beside_the_axis_not_across_the_bars(evaluated):
    import xml.etree.ElementTree as ET

    figure = evaluated["html"].read_text().split('data-plot="per-source"')[1].split("</figure>")[0]
    svg = ET.fromstring(figure[figure.index("<svg"):figure.index("</svg>") + 6])
    ns = "{http://www.w3.org/2000/svg}"
    counts = [t for t in svg.iter(f"{ns}text") if (t.text or "").startswith("(n=")]
    in_ticks = [t for g in svg.iter(f"{ns}g") if g.get("id", "").startswith("ytick_")
                for t in g.iter(f"{ns}text") if (t.text or "").startswith("(n=")]
    # every group's numbers are part of its axis label, none drawn over a bar where error bars cross them
    assert len(counts) == len(in_ticks) == 3


def test_report_rejects_a_malformed_records_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.jpg", "probability": 0.2}\nnot json\n')
    res = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "x.html")])
    assert res.exit_code != 0
    assert "bad.jsonl:2" in str(res.exception)


def test_every_plot_renders_in_a_browser(evaluated, browser_page, artifacts):
    page = browser_page.page
    page.route(re.compile(r"^https?://"), lambda route: route.abort())  # prove it needs no network
    page.goto(evaluated["html"].as_uri())
    figures = page.locator("figure.plot")
    assert figures.count() == len(PLOTS)
    for k in range(figures.count()):
        fig = figures.nth(k)
        name = fig.get_attribute("data-plot")
        box = fig.locator("svg").first.bounding_box()
        assert box and box["width"] > 150 and box["height"] > 100, name
        assert fig.locator("svg path").count() > 5, name  # axes, ticks and data were drawn
    cards = page.locator("figure.card")
    assert cards.count() >= 2
    assert page.locator("figure.card svg.evidence image").count() == cards.count()
    assert page.locator("figure.card rect.heat").count() >= 1  # tiles that lit up, drawn on the image
    natural = page.evaluate("Array.from(document.querySelectorAll('svg.evidence image')).map(i => i.getBBox().width)")
    assert all(w > 0 for w in natural)
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    assert browser_page.errors == []
