"""``workzone tune``: fit fusion weights and exit thresholds on labelled data.

1. Run every stage on every image (no early exit) and keep each stage's log-odds.
2. For each tier, fit a logistic regression over the scores of that tier's and earlier stages:
   that is the tier's fusion (calibrated log-odds pooling).
3. Replay the cascade on those probabilities and choose exit thresholds that maximise MCC under
   the cost budget (cost = each stage's measured ms per image from step 1).
4. Measure each stage's contribution: MCC of the tuned cascade with and without it.
5. Record the cost/MCC frontier: the best MCC within budgets from tier 1's cost to every tier's.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from workzone.config.schema import ExitThresholds, PipelineConfig
from workzone.errors import ConfigError
from workzone.evaluation.metrics import matthews_corrcoef
from workzone.fusion.calibration import fit_fusion, fused_log_odds
from workzone.fusion.thresholds import simulate_cascade, tune_exit_thresholds, walk_cascade
from workzone.types import Decision, is_road_work, sigmoid

__all__ = ["TuneResult", "collect_scores", "cost_mcc_frontier", "measure_stage_costs", "read_scores_csv",
           "replay_cascade", "tune_pipeline", "tune_scores"]


@dataclass
class TuneResult:
    config: PipelineConfig
    summary: dict[str, Any]


def collect_scores(decisions: list[Decision]) -> tuple[list[dict[str, float | None]], dict[str, float]]:
    """Per-image stage log-odds and each stage's mean measured latency (ms per image)."""
    scores = [{s.stage: s.log_odds for s in d.stages} for d in decisions]
    lat: dict[str, list[float]] = {}
    for d in decisions:
        for s in d.stages:
            lat.setdefault(s.stage, []).append(s.latency_ms)
    return scores, {k: float(np.mean(v)) for k, v in lat.items()}


def _tier_stage_names(config: PipelineConfig) -> list[list[str]]:
    return [[s.name for s in t.stages if s.enabled] for t in config.tiers]


def measure_stage_costs(run_all, images: list, *, repeats: int = 5) -> dict[str, float]:  # noqa: ANN001
    """Each stage's ms per image: the minimum over ``repeats`` runs of its mean latency.

    Why the minimum: a busy machine only ever makes a run slower, so the fastest repeat is the
    estimate that moves least with load (a colleague's job moved the mean from 6 to 23 ms).

    Args:
        run_all: ``images -> decisions`` running every stage (``Pipeline.run_decoded(..., run_all=True)``).
        images: a fixed sample of decoded images.
        repeats: runs to take the minimum over.
    """
    best: dict[str, float] = {}
    for _ in range(max(1, repeats)):
        _, lat = collect_scores(run_all(images))
        for k, v in lat.items():
            best[k] = min(best.get(k, float("inf")), v)
    return best


def read_scores_csv(path) -> tuple[list[dict[str, float | None]], list[int], list[str]]:  # noqa: ANN001
    """Out-of-fold stage scores written by ``workzone train loso-scores``: columns key, label, source, one per stage.

    An empty cell is a stage that abstained. Returns (scores, labels, folds): each image's held-out fold
    (the ``fold`` column; its ``source`` where there is none).
    """
    import csv

    scores, labels, sources = [], [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fixed = {"key", "label", "source", "condition", "fold"}
        stages = [c for c in (reader.fieldnames or []) if c not in fixed]
        for r in reader:
            scores.append({k: (float(r[k]) if r[k] not in ("", None) else None) for k in stages})
            labels.append(int(r["label"]))
            sources.append(r.get("fold") or r.get("source", ""))
    return scores, labels, sources


def _rest_of(scores: list[dict[str, float | None]], labels: np.ndarray, folds: np.ndarray, fold: str
             ) -> tuple[np.ndarray, list[dict[str, float | None]], np.ndarray, np.ndarray]:
    """``fold``'s mask, and the scores, labels and folds to fit on without it.

    Without the fold only one class may be left (few folds, some all-negative): then the fold is scored by fits
    on every image, in sample, rather than not at all.
    """
    test = folds == fold
    if len(np.unique(labels[~test])) < 2:
        return test, list(scores), labels, folds
    return test, [sc for sc, t in zip(scores, test) if not t], labels[~test], folds[~test]


def _tier_probs(fusions: list, scores: list[dict[str, float | None]]) -> np.ndarray:
    """Each tier's fused probability of each image, shape (tiers, n); a tier with no fusion says 0.5."""
    return np.vstack([sigmoid(fused_log_odds(scores, f)) if f is not None else np.full(len(scores), 0.5)
                      for f in fusions])


def replay_cascade(config: PipelineConfig, scores: list[dict[str, float | None]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``config``'s fusions and exits replayed on precomputed stage scores (every stage scored on every image):
    per image the probability it leaves with, the tier it leaves at (0-based) and its cost (the stages' ``cost:``).
    """
    probs = _tier_probs([t.fusion for t in config.tiers], scores)
    costs = np.array([sum(float(st.cost or 0.0) for st in t.stages) for t in config.tiers])
    return walk_cascade(probs, costs, [(t.exit.lower, t.exit.upper) for t in config.tiers[:-1]])


def _out_of_fold_probs(config: PipelineConfig, scores: list[dict[str, float | None]], labels: np.ndarray,
                       folds: list[str] | np.ndarray, l2: float, balanced: bool, prior_weight: float,
                       drop: str | None = None) -> np.ndarray:
    """Per tier, each image's fused probability from fusions fitted on the *other* folds (shape (tiers, n)).

    Why exits are chosen on these: a threshold on probabilities fitted to the very images it is tried on
    finds exits that cost nothing there. On the eleven-source LOSO scores, the default's exits so chosen
    (13 % of images leaving after the detector, "free" in-sample) cost 0.045 MCC when every fold was
    scored by a cascade tuned without it: a source the fusions never saw is calibrated differently.
    """
    idx = np.asarray(folds)
    probs = np.zeros((len(config.tiers), len(scores)))
    for fold in sorted(set(idx.tolist())):
        test, fit_on, fit_y, _ = _rest_of(scores, labels, idx, fold)
        fusions, _ = _fit_all(config, fit_on, fit_y, l2, drop=drop, balanced=balanced, prior_weight=prior_weight)
        probs[:, test] = _tier_probs(fusions, [sc for sc, t in zip(scores, test) if t])
    return probs


@dataclass(frozen=True)
class ExitPolicyScore:
    """A choice of the tiers images may leave after, scored as a cascade tuned without each fold."""

    may_exit: tuple[bool, ...]
    mcc: float
    mean_cost_ms: float


@dataclass(frozen=True)
class _FoldView:
    """What choosing exits without one fold needs, whatever tiers may exit: the rest's out-of-fold
    probabilities and labels (to choose the thresholds on), and the fold's probabilities from fusions fitted
    on the rest (to replay them on)."""

    test: np.ndarray
    rest_probs: np.ndarray
    rest_labels: np.ndarray
    held_probs: np.ndarray


def _fold_views(config: PipelineConfig, scores: list[dict[str, float | None]], y: np.ndarray, folds: list[str],
                *, l2: float, balanced: bool, prior_weight: float) -> list[_FoldView]:
    idx = np.asarray(folds)
    views = []
    for fold in sorted(set(folds)):
        test, rest, rest_y, rest_folds = _rest_of(scores, y, idx, fold)
        inner = _out_of_fold_probs(config, rest, rest_y, rest_folds, l2, balanced, prior_weight)
        fusions, _ = _fit_all(config, rest, rest_y, l2, balanced=balanced, prior_weight=prior_weight)
        views.append(_FoldView(test, inner, rest_y, _tier_probs(fusions, [sc for sc, t in zip(scores, test) if t])))
    return views


def _exit_policy_out_of_fold(views: list[_FoldView], y: np.ndarray, tier_costs: np.ndarray,
                             may_exit: tuple[bool, ...], max_cost: float | None) -> ExitPolicyScore:
    """Pooled MCC of each fold decided by a cascade whose fusions and exits were chosen on the other folds.

    Why: exits chosen on the images they are tried on, even on out-of-fold probabilities, can look free and
    still cost recall on a source that was not among them (leaving TraCon out, exits after the detector
    tuned on the rest sent 54 % of its images out early and lost 42 of its 261 work zones). Which tiers
    may exit at all is therefore itself chosen by how the tuned cascade does on folds it never saw.
    """
    pred = np.zeros(len(y), dtype=int)
    cost = 0.0
    for v in views:
        thresholds, _ = tune_exit_thresholds(v.rest_probs, v.rest_labels, tier_costs, max_cost=max_cost,
                                             may_exit=may_exit)
        sim = simulate_cascade(v.held_probs, y[v.test], tier_costs, thresholds)
        pred[v.test] = sim.predictions
        cost += sim.cost * int(v.test.sum())
    return ExitPolicyScore(may_exit, matthews_corrcoef(y, pred), cost / len(y))


def _choose_exit_policy(config: PipelineConfig, scores: list[dict[str, float | None]], y: np.ndarray,
                        folds: list[str], tier_costs: np.ndarray, *, max_cost: float | None, l2: float,
                        balanced: bool, prior_weight: float) -> tuple[tuple[bool, ...], list[ExitPolicyScore]]:
    """The set of tiers allowed to exit whose cascade does best out of fold (ties: the cheaper)."""
    import itertools

    # The fits do not depend on which tiers may exit: made once, replayed for every choice.
    views = _fold_views(config, scores, y, folds, l2=l2, balanced=balanced, prior_weight=prior_weight)
    scored = []
    for may_exit in itertools.product((False, True), repeat=len(config.tiers) - 1):
        try:
            scored.append(_exit_policy_out_of_fold(views, y, tier_costs, may_exit, max_cost))
        except ConfigError:  # this choice cannot meet the budget
            continue
    if not scored:
        raise ConfigError("no choice of exit tiers meets the budget out of fold: raise --max-cost")
    best = max(scored, key=lambda s: (round(s.mcc, 9), -s.mean_cost_ms))
    return best.may_exit, scored


def _fit_all(config: PipelineConfig, scores: list[dict[str, float | None]], labels: np.ndarray,
             l2: float, drop: str | None = None, balanced: bool = False, prior_weight: float = 0.0):
    tiers = _tier_stage_names(config)
    fusions, seen = [], []
    for tier, names in zip(config.tiers, tiers):
        seen = seen + [n for n in names if n != drop]
        # A tier that names its pooled stages fits only those (the others stay out of its answer).
        pooled = [n for n in seen if tier.fusion.stages is None or n in tier.fusion.stages]
        fus = fit_fusion(scores, labels, pooled, l2=l2, balanced=balanced, prior_weight=prior_weight) if pooled else None
        if fus is not None and tier.fusion.stages is not None:
            fus = fus.model_copy(update={"stages": tier.fusion.stages})
        fusions.append(fus)
    return fusions, _tier_probs(fusions, scores)


#: A budget that costs more MCC than this is worth a sentence (and ``tune --strict`` refuses it).
BUDGET_MCC_LOSS = 0.05
#: Fewer images, or fewer of the rarer class, than these make thresholds that move with a handful of
#: images: MCC's 95 % bootstrap interval is wider than +-0.1 below about 200 images.
SMALL_SET_IMAGES = 200
SMALL_SET_MINORITY = 30


def _tuning_warnings(config: PipelineConfig, y: np.ndarray, probs: np.ndarray, tier_costs: np.ndarray, sim: Any,
                     max_cost: float | None) -> list[str]:
    """What the tuned pipeline's numbers hide: a budget that costs MCC, a set too small to trust."""
    out = []
    if max_cost is not None:
        _, free = tune_exit_thresholds(probs, y, tier_costs, max_cost=None)
        if free.mcc - sim.mcc > BUDGET_MCC_LOSS:
            out.append(f"the budget --max-cost {max_cost:g} ms costs {free.mcc - sim.mcc:.2f} MCC: {sim.mcc:.3f} "
                       f"under it against {free.mcc:.3f} without it (mean cost {free.cost:.1f} ms/img), with "
                       f"{sim.exit_rates[0]:.0%} of images decided by tier 1 '{config.tiers[0].name}' alone; raise "
                       "--max-cost or drop it")
    minority = int(min(y.sum(), len(y) - y.sum()))
    if len(y) < SMALL_SET_IMAGES or minority < SMALL_SET_MINORITY:
        out.append(f"the tuning set is small ({len(y)} images, {minority} of the rarer class; fewer than "
                   f"{SMALL_SET_IMAGES} images or {SMALL_SET_MINORITY} of a class): the fitted weights and exits may "
                   "not hold on new images; tune on more labelled images")
    return out


def cost_mcc_frontier(probs: np.ndarray, labels: np.ndarray, tier_costs: np.ndarray,
                      points: int = 12) -> list[dict[str, float]]:
    """Best MCC the exit thresholds reach within budgets from tier 1's cost to every tier's.

    Args:
        probs: shape (tiers, n): fused probability of each image after each tier.
        labels: shape (n,).
        tier_costs: shape (tiers,): cost per image of each tier, ms.
        points: budgets tried, evenly spaced.

    Returns:
        One ``{"max_cost_ms", "mean_cost_ms", "mcc"}`` per budget, cheapest first.
    """
    if probs.shape[0] < 2:
        return []
    out = []
    for budget in np.linspace(tier_costs[0], tier_costs.sum(), points):
        _, sim = tune_exit_thresholds(probs, labels, tier_costs, max_cost=float(budget) + 1e-6)
        out.append({"max_cost_ms": round(float(budget), 2), "mean_cost_ms": round(sim.cost, 2),
                    "mcc": round(sim.mcc, 4)})
    return out


def tune_pipeline(config: PipelineConfig, decisions: list[Decision], labels: list[int], *,
                  max_cost: float | None = None, l2: float = 1e-2, data_name: str = "",
                  balanced: bool = False) -> TuneResult:
    """Fit fusion and exit thresholds from a run_all evaluation of ``config``.

    Args:
        config: the pipeline that produced ``decisions``.
        decisions: one decision per labelled image, from ``run(..., run_all=True)``.
        labels: 0/1 labels.
        max_cost: mean cost budget per image in ms (None: best MCC at the lowest cost).
        l2: ridge penalty of the fusion regressions.
        balanced: fit the fusions for a 50/50 class prior instead of the tuning set's class mix
            (the exit thresholds are still chosen for MCC on the tuning set).
    """
    scores, latency = collect_scores(decisions)
    return tune_scores(config, scores, labels, latency, max_cost=max_cost, l2=l2, data_name=data_name,
                       balanced=balanced)


def tune_scores(config: PipelineConfig, scores: list[dict[str, float | None]], labels: list[int],
                latency: dict[str, float], *, max_cost: float | None = None, l2: float = 1e-2, data_name: str = "",
                balanced: bool = False, prior_weight: float = 0.0, costs_measured: str = "mean of the tuning run",
                folds: list[str] | None = None, contributions: bool = True) -> TuneResult:
    """Fit fusion and exit thresholds from per-image stage scores and per-stage costs.

    The scores may come from a run of the pipeline (:func:`tune_pipeline`) or be out-of-fold
    scores (each image scored by models that never saw its source), so that every tier is only
    as confident as it is on sources it never saw.

    Args:
        config: the pipeline whose stages the score columns name.
        scores: per image, stage name -> log-odds (None: abstained).
        labels: 0/1 labels.
        latency: stage name -> ms per image.
        prior_weight: the fusion weight the ridge penalty shrinks towards (see
            :func:`workzone.fusion.calibration.fit_logistic`).
        costs_measured: how ``latency`` was measured (recorded in the summary).
        folds: each image's held-out fold (``loso-scores``' ``fold`` column). Given, the exit thresholds are
            chosen on out-of-fold fused probabilities (see :func:`_out_of_fold_probs`) and the summary's
            ``mcc`` is that of the cascade so replayed; the shipped fusions are still fitted on every image.
        contributions: measure each stage's contribution (a refit without it: most of the time of a tune).
    """
    y = np.asarray(labels, dtype=int)
    tiers = _tier_stage_names(config)
    missing = sorted({n for names in tiers for n in names} - set(latency))
    if missing:
        raise ConfigError(f"no cost for stage(s) {missing}: measure them (--measure-costs) or set `cost:` in the pipeline")
    unscored = sorted({n for names in tiers for n in names} - {k for s in scores for k in s})
    if unscored:
        raise ConfigError(f"the scores have no column for stage(s) {unscored}")
    tier_costs = np.array([sum(latency.get(n, 0.0) for n in names) for names in tiers])
    fusions, probs = _fit_all(config, scores, y, l2, balanced=balanced, prior_weight=prior_weight)
    may_exit, policies = None, []
    if folds is not None:
        if len(folds) != len(scores):
            raise ConfigError(f"got {len(folds)} folds for {len(scores)} images")
        if len(set(folds)) < 2:
            raise ConfigError(f"exits chosen out of fold need at least two folds; the scores name one ({folds[0]!r}): "
                              "give them a `fold` (or `source`) column with several, or choose exits in sample "
                              "(`workzone tune --exits-in-sample`)")
        probs = _out_of_fold_probs(config, scores, y, list(folds), l2, balanced, prior_weight)
        if len(config.tiers) > 1:
            may_exit, policies = _choose_exit_policy(config, scores, y, list(folds), tier_costs, max_cost=max_cost,
                                                     l2=l2, balanced=balanced, prior_weight=prior_weight)
    thresholds, sim = tune_exit_thresholds(probs, y, tier_costs, max_cost=max_cost, may_exit=may_exit)

    contribution: dict[str, Any] = {}
    all_stages = [n for names in tiers for n in names]
    for name in all_stages:
        if len(all_stages) == 1 or not contributions:
            break
        _, p_wo = _fit_all(config, scores, y, l2, drop=name, balanced=balanced, prior_weight=prior_weight)
        if folds is not None:
            p_wo = _out_of_fold_probs(config, scores, y, list(folds), l2, balanced, prior_weight, drop=name)
        th_wo, sim_wo = tune_exit_thresholds(p_wo, y, tier_costs, max_cost=max_cost, may_exit=may_exit)
        contribution[name] = {"mcc_without": round(sim_wo.mcc, 4), "mcc_with": round(sim.mcc, 4),
                              "delta_mcc": round(sim.mcc - sim_wo.mcc, 4),
                              "cost_ms_per_image_when_run": round(latency.get(name, 0.0), 2)}

    new_tiers = []
    for k, tier in enumerate(config.tiers):
        stages = tuple(s.model_copy(update={"cost": round(latency[s.name], 2)}) if s.name in latency else s
                       for s in tier.stages)
        lo, hi = thresholds[k] if k < len(thresholds) else (None, None)
        fus = fusions[k] if fusions[k] is not None else tier.fusion
        new_tiers.append(tier.model_copy(update={"stages": stages, "fusion": fus,
                                                 "exit": ExitThresholds(lower=lo, upper=hi)}))
    per_tier_mcc = [round(matthews_corrcoef(y, is_road_work(probs[k]).astype(int)), 4) for k in range(len(tiers))]
    summary = {
        "fitted_on": data_name, "n": int(len(y)), "positives": int(y.sum()),
        "exits_chosen_on": ("in-sample fused probabilities" if folds is None else
                            f"out-of-fold fused probabilities ({len(set(folds))} folds)"),
        **({"exit_tiers": {
            "chosen": [t.name for t, a in zip(config.tiers, may_exit) if a],
            "candidates": [{"may_exit": [t.name for t, a in zip(config.tiers, p.may_exit) if a],
                            "out_of_fold_mcc": round(p.mcc, 4), "mean_cost_ms": round(p.mean_cost_ms, 2)}
                           for p in policies]}} if may_exit is not None else {}),
        "date": _dt.date.today().isoformat(), "l2": l2, "balanced": balanced, "prior_weight": prior_weight,
        "max_cost_ms": max_cost, "costs": costs_measured,
        "mcc": round(sim.mcc, 4), "mean_cost_ms": round(sim.cost, 2),
        "exit_rates": [round(r, 4) for r in sim.exit_rates],
        "mcc_if_every_image_ran_to_tier": per_tier_mcc,
        "stage_cost_ms": {k: round(v, 2) for k, v in latency.items()},
        "contribution": contribution,
        "tradeoff": cost_mcc_frontier(probs, y, tier_costs),
    }
    # A tier that no image reaches under the budget is dead weight: say so rather than ship it silently.
    reach = 1.0 - np.cumsum([0.0] + list(sim.exit_rates))[:-1]
    unreachable = [config.tiers[k].name for k in range(1, len(tiers)) if reach[k] <= 0.0]
    if unreachable:
        summary["unreachable_tiers"] = unreachable
    warnings = _tuning_warnings(config, y, probs, tier_costs, sim, max_cost)
    if warnings:
        summary["warnings"] = warnings
    new_cfg = config.model_copy(update={"tiers": tuple(new_tiers), "tuning": summary})
    return TuneResult(new_cfg, summary)
