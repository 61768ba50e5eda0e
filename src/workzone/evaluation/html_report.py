"""``workzone report``: one self-contained HTML file from prediction records (no network needed to open it).

Sections: headline metrics with 95 % intervals, ROC and precision-recall curves, reliability diagram,
final-probability histogram, per-source and per-condition scores, exit funnel per tier, the cost/MCC
trade-off recorded by ``workzone tune``, per-stage latency histograms, and a gallery of the worst misses
and false alarms with their evidence drawn on the image. Figures are inline SVG (matplotlib, extra
``report``); gallery images are small base64 JPEGs.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workzone.evaluation import plots
from workzone.evaluation.gallery import evidence_card, pick_worst
from workzone.evaluation.stats import headline_metrics, reliability_bins, subset_score
from workzone.io.atomic import atomic_write_text

__all__ = ["build_html", "write_report", "tradeoff_points"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#212529}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
.meta{color:#495057}.grid{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}
figure.plot{background:#fff;border:1px solid #e9ecef;border-radius:6px;padding:6px}
figure.plot svg{max-width:100%;height:auto}figure.plot figcaption{font-size:12px;color:#495057;max-width:520px}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #e9ecef;text-align:right}
td:first-child,th:first-child{text-align:left}table.stages{font-size:12px;margin-top:4px}
table.stages td:last-child,table.stages th:last-child{text-align:left;white-space:normal}
table.contribution{align-self:flex-start}
.card{border:1px solid #dee2e6;border-radius:6px;padding:8px;width:548px;font-size:12px;overflow-wrap:anywhere}
.card svg.evidence{display:block;width:100%;height:auto;max-height:420px}table.stages th{white-space:nowrap}table.stages td{white-space:nowrap}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.note{background:#fff9db;border-left:4px solid #fab005;padding:6px 10px;margin:8px 0}
.missing{padding:40px;background:#f1f3f5;color:#868e96}
"""


def _plot(name: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" data-plot="{name}">{svg}<figcaption>{caption}</figcaption></figure>'


def _headline(y: np.ndarray, p: np.ndarray, metrics: dict[str, Any]) -> str:
    rows = []
    for name, iv in metrics.items():
        ci = "undefined" if iv.low is None else f"[{iv.low:.3f}, {iv.high:.3f}]"
        val = "undefined" if iv.value is None else f"{iv.value:.3f}"
        rows.append(f"<tr><td>{name}</td><td><b>{val}</b></td><td>{ci}</td><td>{html.escape(iv.method)}</td></tr>")
    pred = p > 0.5
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    tn, fn = int((~pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
    return ('<table class="headline"><tr><th>metric</th><th>value</th><th>95 % interval</th><th>interval by</th></tr>'
            + "".join(rows) + f"</table><p>confusion at p &gt; 0.5: tp {tp}, fp {fp}, tn {tn}, fn {fn} "
            f"({int(y.sum())} road-work images of {len(y)})</p>")


def _groups(records: Sequence[dict[str, Any]], key: str) -> list[tuple[str, dict[str, Any]]]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get(key):
            by[str(r[key])].append(r)
    return [(name, subset_score([r["truth"] for r in rs], [r["probability"] for r in rs]))
            for name, rs in sorted(by.items())]


def _tier_names(records: Sequence[dict[str, Any]], tier_names: Sequence[str] | None) -> list[str]:
    if tier_names:
        return list(tier_names)
    names: dict[int, str] = {}
    for r in records:
        # An unnamed tier gets no name (the funnel then says "tier k"), never its index as a name.
        if r.get("exit_tier") is not None:
            names[int(r["exit_tier"])] = str(r.get("exit_tier_name") or "")
        for s in r.get("stages", []):
            if s.get("tier", -1) >= 0:
                names.setdefault(int(s["tier"]), "")
    return [names.get(k, "") for k in range(max(names) + 1)] if names else []


def _funnel(records: Sequence[dict[str, Any]], names: list[str]) -> tuple[list[int], list[dict[str, int]]]:
    exits: list[dict[str, int]] = [defaultdict(int) for _ in names]  # type: ignore[misc]
    for r in records:
        k = r.get("exit_tier")
        if k is None or not 0 <= k < len(names):
            continue
        outcome = "unlabelled" if r.get("truth") is None else (
            "right" if (r["probability"] > 0.5) == bool(r["truth"]) else "wrong")
        exits[k][outcome] += 1
    left = [sum(e.values()) for e in exits]
    reached = [sum(left[k:]) for k in range(len(names))]
    return reached, [dict(e) for e in exits]


def tradeoff_points(tuning: dict[str, Any], tier_stages: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Points of the cost/MCC plot from a pipeline's ``tuning`` block: the chosen setting, every image run
    to tier k (cost = the stages' measured cost up to k), and the frontier when the block records one."""
    pts: list[dict[str, Any]] = []
    costs = tuning.get("stage_cost_ms", {})
    cum = 0.0
    for k, mcc in enumerate(tuning.get("mcc_if_every_image_ran_to_tier", [])):
        if k < len(tier_stages):
            cum += sum(costs.get(s, 0.0) for s in tier_stages[k])
            pts.append({"kind": "tier", "cost": cum, "mcc": mcc, "label": f"to tier {k + 1}"})
    for q in tuning.get("tradeoff", []):
        pts.append({"kind": "frontier", "cost": q["mean_cost_ms"], "mcc": q["mcc"], "label": ""})
    if "mcc" in tuning and "mean_cost_ms" in tuning:
        pts.append({"kind": "chosen", "cost": tuning["mean_cost_ms"], "mcc": tuning["mcc"],
                    "label": "tuned" + (f" (budget {tuning['max_cost_ms']} ms)" if tuning.get("max_cost_ms") else "")})
    return pts


def _tier_stages(records: Sequence[dict[str, Any]], n_tiers: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(n_tiers)]
    for r in records:
        for s in r.get("stages", []):
            t = s.get("tier", -1)
            if 0 <= t < n_tiers and s["stage"] not in out[t]:
                out[t].append(s["stage"])
    return out


def _contribution_table(tuning: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{c['mcc_without']:.3f}</td><td>{c['delta_mcc']:+.3f}</td>"
                   f"<td>{c['cost_ms_per_image_when_run']:.1f}</td></tr>"
                   for k, c in tuning.get("contribution", {}).items())
    if not rows:
        return ""
    return ("<table class=contribution><tr><th>stage</th><th>MCC if tuned without it</th><th>its gain</th><th>ms per image when run</th>"
            f"</tr>{rows}</table>")


def build_html(records: Sequence[dict[str, Any]], *, base: Path, title: str = "workzone evaluation",
               tuning: dict[str, Any] | None = None, tier_names: Sequence[str] | None = None,
               gallery_size: int = 8, source_note: str = "") -> str:
    """The whole report as one HTML string.

    Args:
        records: prediction records (see :mod:`workzone.evaluation.records`); those with ``truth`` are scored.
        base: folder that relative record paths start from (for the gallery's images).
        title: page title (the pipeline's name, typically).
        tuning: the pipeline's ``tuning`` block, for the cost/MCC trade-off.
        tier_names: the pipeline's tier names (else taken from the records).
        gallery_size: how many misses and how many false alarms to show.
        source_note: where the records came from, shown under the title.
    """
    decided = [r for r in records if r.get("probability") is not None]
    labelled = [r for r in decided if r.get("truth") is not None]
    failed = len(records) - len(decided)
    y = np.array([int(r["truth"]) for r in labelled], dtype=int)
    p = np.array([r["probability"] for r in labelled], dtype=np.float64)
    names = _tier_names(decided, tier_names)
    out = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1><p class=meta>{len(records)} images, {len(decided)} decided, "
           f"{len(labelled)} with a true label, {failed} not decodable. {html.escape(source_note)} "
           f"Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"]
    if len(labelled) and 0 < y.sum() < len(y):
        metrics = headline_metrics(y, p)  # one set of intervals: the table and the ROC legend agree
        out.append("<h2>Headline metrics</h2>" + _headline(y, p, metrics))
        out.append('<div class="grid">'
                   + _plot("roc", plots.roc_figure(y, p, metrics["ROC-AUC"]), "Each step is one decision threshold; 95 % bootstrap "
                           "interval of the area in the legend.")
                   + _plot("pr", plots.pr_figure(y, p), "Precision against recall; the dot is the p &gt; 0.5 "
                           "operating point.")
                   + _plot("reliability", plots.reliability_figure(reliability_bins(y, p)), "Points on the diagonal "
                           "mean the probability can be read as a frequency (numbers: images per bin).")
                   + _plot("probabilities", plots.probability_figure(p, y), "Final probabilities by true label.")
                   + "</div>")
    else:
        out.append('<p class="note">No true labels with both classes in these records, so no metrics: give the '
                   "manifest (<code>--manifest</code>) to join labels by path.</p>")
        if decided:
            out.append(_plot("probabilities", plots.probability_figure(
                np.array([r["probability"] for r in decided]), None), "Final probabilities."))
    if labelled:
        out.append("<h2>Per source and per condition</h2><p>MCC where a subset has both classes; a subset with only "
                   "road work is scored by recall, one with none by specificity (its MCC is undefined, not 0). "
                   "Bars: 95 % intervals.</p><div class=grid>")
        for key, label in (("source", "Per source"), ("condition", "Per condition")):
            groups = _groups(labelled, key)
            if groups:
                out.append(_plot(f"per-{key}", plots.group_bars_figure(label, groups), f"{label.lower()}."))
        out.append("</div>")
    if names:
        reached, exits = _funnel(decided, names)
        out.append("<h2>Cascade</h2><div class=grid>" + _plot("funnel", plots.funnel_figure(names, reached, exits),
                   "Grey: images that reached each tier; green / red: images that left there, decided right / wrong."))
        if tuning:
            pts = tradeoff_points(tuning, _tier_stages(decided, len(names)))
            if pts:
                note = "" if tuning.get("tradeoff") else (" This tuning block records no frontier; re-run "
                                                          "<code>workzone tune</code> to record it.")
                out.append(_plot("tradeoff", plots.tradeoff_figure(pts), f"Fitted on {html.escape(str(tuning.get('fitted_on', '?')))} "
                                 f"({tuning.get('n', '?')} images).{note}") + _contribution_table(tuning))
        out.append("</div>")
    per_stage: dict[str, list[float]] = defaultdict(list)
    for r in decided:
        for s in r.get("stages", []):
            if s.get("latency_ms") is not None:
                per_stage[s["stage"]].append(float(s["latency_ms"]))
    if per_stage:
        out.append("<h2>Latency per stage</h2>" + _plot("latency", plots.latency_figure(dict(per_stage)),
                   "Stage wall time per image of its batch, on the machine that produced the records."))
    misses, alarms = pick_worst(labelled, gallery_size)
    pos, neg = sum(1 for r in labelled if r["truth"]), sum(1 for r in labelled if not r["truth"])
    for heading, picked, empty in (
            ("Worst misses (road work called none)", misses,
             "no misses" if pos else "no image is labelled road work, so none can be missed"),
            ("Worst false alarms (none called road work)", alarms,
             "no false alarms" if neg else "no image is labelled without road work, so none can be a false alarm")):
        if not labelled:  # "no misses" would claim what nobody checked
            empty = ("no true labels, so misses and false alarms cannot be told apart from right answers: give the "
                     "manifest (<code>--manifest</code>)")
        cards = "".join(evidence_card(r, base) for r in picked) or f"<p>{empty}</p>"
        out.append(f"<h2>{heading}</h2><div class='grid gallery'>{cards}</div>")
    out.append("</body></html>")
    return "".join(out)


def write_report(path: str | Path, records: Sequence[dict[str, Any]], **kwargs: Any) -> Path:
    """Write :func:`build_html` to ``path`` (folders created); returns the path."""
    out = Path(path)
    atomic_write_text(out, build_html(records, **kwargs))
    return out
