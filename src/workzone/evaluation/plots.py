"""The report's figures, drawn with matplotlib (extra ``report``) and returned as inline SVG text.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global state, no GUI
backend, safe in a server or a thread. Text stays text in the SVG (``svg.fonttype: none``), which
keeps files small and readable offline.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from workzone._optional import require
from workzone.evaluation.stats import Interval, pr_curve, roc_curve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["roc_figure", "pr_figure", "reliability_figure", "group_bars_figure", "funnel_figure",
           "tradeoff_figure", "latency_figure", "probability_figure"]

_POS, _NEG, _BAD, _OK = "#d9480f", "#1c7ed6", "#c92a2a", "#2b8a3e"


def _figure(w: float = 5.0, h: float = 3.6) -> "Figure":
    figure_mod = require("matplotlib.figure", "report", "plots in `workzone report`")
    return figure_mod.Figure(figsize=(w, h), layout="constrained")


def _svg(fig: "Figure") -> str:
    mpl = require("matplotlib", "report", "plots in `workzone report`")
    buf = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "workzone"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG is inlined in HTML


def _style(ax: "Axes", title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def roc_figure(y: np.ndarray, p: np.ndarray, auc: Interval) -> str:
    fpr, tpr = roc_curve(y, p)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    label = f"ROC-AUC {auc.value:.3f}" + (f" [{auc.low:.3f}, {auc.high:.3f}]" if auc.low is not None else "")
    ax.step(fpr, tpr, where="post", c=_POS, lw=2, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right")
    _style(ax, "ROC curve", "false-positive rate (1 - specificity)", "true-positive rate (recall)")
    return _svg(fig)


def pr_figure(y: np.ndarray, p: np.ndarray) -> str:
    recall, precision = pr_curve(y, p)
    fig = _figure()
    ax = fig.add_subplot()
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"prevalence {y.mean():.2f}")
    ax.plot(np.r_[0, recall], np.r_[1, precision], c=_POS, lw=2, drawstyle="steps-post", label="cascade")
    at = int(np.argmin(np.abs(np.sort(np.unique(p))[::-1] - 0.5)))  # operating point nearest p = 0.5
    ax.plot(recall[at], precision[at], "o", c="black", label="p > 0.5")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    _style(ax, "Precision-recall curve", "recall", "precision")
    return _svg(fig)


def reliability_figure(bins: Sequence[dict[str, float]]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    mids = [b["mean_p"] for b in bins]
    obs = [b["observed"] for b in bins]
    sizes = [20 + 200 * b["n"] / max(1, max(x["n"] for x in bins)) for b in bins]
    ax.plot(mids, obs, c=_POS, lw=1.5)
    ax.scatter(mids, obs, s=sizes, c=_POS, alpha=0.8, label="bins (area = images)")
    for b in bins:
        ax.annotate(str(b["n"]), (b["mean_p"], b["observed"]), textcoords="offset points", xytext=(6, -10),
                    fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left")
    _style(ax, "Reliability diagram", "mean predicted P(road work)", "observed share of road work")
    return _svg(fig)


def group_bars_figure(title: str, groups: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Horizontal bars, one per group, of the score that is defined for it (see ``stats.subset_score``),
    with its interval and the metric named on the bar."""
    colours = {"MCC": "#5f3dc4", "recall": _POS, "specificity": _NEG}
    fig = _figure(7.4, 0.75 * len(groups) + 1.4)
    ax = fig.add_subplot()
    labels = []
    for k, (name, s) in enumerate(groups):
        iv: Interval = s["interval"]
        v = iv.value if iv.value is not None else 0.0
        ax.barh(k, v, color=colours[s["metric"]], alpha=0.85)
        if iv.low is not None:
            ax.errorbar(v, k, xerr=[[v - iv.low], [iv.high - v]], fmt="none", ecolor="black", capsize=3)
        text = f"{s['metric']} {iv.value:.3f}" if iv.value is not None else f"{s['metric']} undefined"
        if s["metric"] == "MCC" and s.get("recall") is not None:
            text += f", recall {s['recall']:.3f}, specificity {s['specificity']:.3f}"
        # The numbers go beside the axis, under the group's name, where no bar or error bar can cross them.
        labels.append(f"{name}\n{text}\n(n={s['n']}, {s['positives']} road work{s.get('note', '')})")
    ax.set_yticks(range(len(groups)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, *(s["interval"].low or 0.0 for _, s in groups)), 1.0)
    _style(ax, title, "score (MCC with both classes; recall if only road work; specificity if none)", "")
    return _svg(fig)


def funnel_figure(tier_names: Sequence[str], reached: Sequence[int], exits: Sequence[dict[str, int]]) -> str:
    """Per tier: images that reached it, and how those that left there were decided (right / wrong)."""
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(tier_names))
    ax.bar(x - 0.2, reached, 0.4, color="#adb5bd", label="reached the tier")
    right = np.array([e.get("right", 0) for e in exits])
    wrong = np.array([e.get("wrong", 0) for e in exits])
    unknown = np.array([e.get("unlabelled", 0) for e in exits])
    ax.bar(x + 0.2, right, 0.4, color=_OK, label="left here, right")
    ax.bar(x + 0.2, wrong, 0.4, bottom=right, color=_BAD, label="left here, wrong")
    if unknown.any():
        ax.bar(x + 0.2, unknown, 0.4, bottom=right + wrong, color="#868e96", label="left here, no label")
    for k in range(len(x)):
        ax.annotate(str(reached[k]), (x[k] - 0.2, reached[k]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{k}: {n}" if n else f"tier {k}" for k, n in enumerate(tier_names, start=1)])
    ax.legend(fontsize=8)
    _style(ax, "Exit funnel", "tier", "images")
    return _svg(fig)


def tradeoff_figure(points: Sequence[dict[str, Any]]) -> str:
    """MCC against mean cost (ms per image) for the settings ``workzone tune`` explored or measured.

    Args:
        points: dicts with ``cost``, ``mcc``, ``label`` and ``kind`` (``chosen``, ``tier``, ``without``,
            ``frontier``).
    """
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    style = {"frontier": dict(c="#868e96", marker=".", ls="-"), "tier": dict(c=_NEG, marker="s", ls=""),
             "without": dict(c=_POS, marker="v", ls=""), "chosen": dict(c="black", marker="*", ls="", ms=14)}
    names = {"frontier": "best MCC within a budget", "tier": "every image run to tier k",
             "without": "tuned without one stage", "chosen": "tuned operating point"}
    for kind in ("frontier", "tier", "without", "chosen"):
        pts = [q for q in points if q["kind"] == kind]
        if not pts:
            continue
        ax.plot([q["cost"] for q in pts], [q["mcc"] for q in pts], label=names[kind], **style[kind])
        if kind != "frontier":
            for q in pts:
                ax.annotate(q["label"], (q["cost"], q["mcc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    _style(ax, "Cost / MCC trade-off (from the pipeline's tuning)", "mean cost, ms per image", "MCC")
    return _svg(fig)


def latency_figure(per_stage: dict[str, list[float]]) -> str:
    """One histogram of per-image latency per stage, with p50 and p95 marked (values over p99 not drawn)."""
    names = list(per_stage)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = _figure(3.2 * cols, 2.5 * rows)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        v = np.asarray(per_stage[name], dtype=np.float64)
        cut = np.percentile(v, 99)  # one stalled call would squash the histogram: draw up to p99
        ax.hist(v[v <= cut], bins=30, color="#495057")
        for q, ls in ((50, "-"), (95, "--")):
            ax.axvline(np.percentile(v, q), c=_POS, ls=ls, lw=1.2, label=f"p{q} {np.percentile(v, q):.1f} ms")
        ax.legend(fontsize=7)
        hidden = int((v > cut).sum())
        _style(ax, f"{name} (n={len(v)}" + (f", {hidden} over p99 not drawn)" if hidden else ")"), "ms per image",
               "images")
    return _svg(fig)


def probability_figure(p: np.ndarray, y: np.ndarray | None) -> str:
    """Histogram of final probabilities, split by true label when labels are known."""
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 26)
    if y is None:
        ax.hist(p, bins=bins, color="#495057", label="all images")
    else:
        ax.hist(p[y == 0], bins=bins, color=_NEG, alpha=0.7, label="no road work (truth)")
        ax.hist(p[y == 1], bins=bins, color=_POS, alpha=0.7, label="road work (truth)")
    ax.axvline(0.5, c="black", ls="--", lw=1)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    _style(ax, "Final probabilities", "P(road work)", "images (log scale)")
    return _svg(fig)
