"""Cost-aware routing: which stages of a tier run for each image still undecided.

Without a router every undecided image runs every stage of the next tier (the fixed order). A
tier's ``route`` is a list of rules; the first rule whose conditions match an image's state before
the tier names the stages to run on it, and why. The state is read from the evidence gathered so far:

* ``z``: the fused log-odds after the previous tier (how uncertain the image still is),
* ``disagree``: two earlier stages point opposite ways, each with |log-odds| >= 1,
* ``text_seen``: an earlier stage read text (sign OCR found something).

:func:`fit_router` learns the rules from out-of-fold stage scores: for each band of ``z`` it
picks the subset of the tier's stages whose balanced-accuracy gain over not running them, minus
``lam`` x its cost in ms, is largest (balanced accuracy moves with MCC and, unlike MCC, adds up
over images). The tier's own fusion scores a routed image with the stages that did not run
abstaining, exactly as the cascade then does. ``benchmarks/router_vs_fixed.py`` measures it
against the fixed order at the same budget.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workzone.types import StageReport

__all__ = ["RouteRule", "RouterConfig", "RouteState", "route_state", "choose_stages", "plan_routes", "fit_router"]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class RouteRule(BaseModel):
    """Run ``stages`` on images whose state matches every condition given."""

    model_config = _STRICT
    z: tuple[float, float] = Field(default=(-math.inf, math.inf), description="[lo, hi) of the fused log-odds")
    disagree: bool | None = Field(default=None, description="match only (dis)agreeing earlier stages")
    text_seen: bool | None = Field(default=None, description="match only images where text was (not) read")
    stages: tuple[str, ...] = Field(description="stages of this tier to run (empty: none, the image moves on)")
    reason: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> "RouteRule":
        if not self.z[0] < self.z[1]:
            raise ValueError(f"z: expected lo < hi, got {self.z}")
        return self


class RouterConfig(BaseModel):
    """A tier's router: the first matching rule wins; no match runs every stage (the fixed order)."""

    model_config = _STRICT
    enabled: bool = True
    rules: tuple[RouteRule, ...] = Field(min_length=1)
    fitted: bool = False
    summary: dict = Field(default_factory=dict, description="how the rules were fitted")


class RouteState(BaseModel):
    model_config = _STRICT
    z: float
    disagree: bool
    text_seen: bool


def route_state(z: float, reports: Sequence[StageReport]) -> RouteState:
    """An image's routing state from its fused log-odds and the reports gathered so far."""
    lo = [r.log_odds for r in reports if r.log_odds is not None]
    disagree = any(a >= 1.0 for a in lo) and any(a <= -1.0 for a in lo)
    return RouteState(z=z, disagree=disagree, text_seen=any(r.evidence.texts for r in reports))


def choose_stages(router: RouterConfig, state: RouteState, all_stages: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """(stages to run, reason) for one image.

    Examples:
        >>> r = RouterConfig(rules=(RouteRule(z=(-1.0, 1.0), stages=("cones",), reason="unsure"),))
        >>> choose_stages(r, RouteState(z=0.2, disagree=False, text_seen=False), ["tta", "cones"])
        (('cones',), 'rule 1 (z 0.20 in [-1, 1)): unsure')
        >>> choose_stages(r, RouteState(z=3.0, disagree=False, text_seen=False), ["tta", "cones"])[0]
        ('tta', 'cones')
    """
    for k, rule in enumerate(router.rules, 1):
        if not rule.z[0] <= state.z < rule.z[1]:
            continue
        if rule.disagree is not None and rule.disagree != state.disagree:
            continue
        if rule.text_seen is not None and rule.text_seen != state.text_seen:
            continue
        stages = tuple(s for s in all_stages if s in rule.stages)
        why = f"rule {k} (z {state.z:.2f} in [{rule.z[0]:g}, {rule.z[1]:g}))"
        return stages, f"{why}: {rule.reason}" if rule.reason else why
    return tuple(all_stages), "no rule matched: every stage (fixed order)"


def fit_router(z_before: np.ndarray, base_z: np.ndarray, contrib: dict[str, np.ndarray], labels: np.ndarray,
               costs: dict[str, float], *, lam: float, edges: Sequence[float], n_total: int | None = None) -> RouterConfig:
    """Learn one rule per band of ``z_before`` for the images that reach a tier.

    Args:
        z_before: (N,) fused log-odds before the tier (the previous tier's fusion): the band key.
        base_z: (N,) the tier's fusion with none of its own stages run (bias + earlier stages).
        contrib: per stage of the tier, (N,) its term ``weight * log_odds`` in the tier's fusion
            (0 where it abstains), so running a subset gives ``base_z + sum(contrib[s])``.
        labels: (N,) 0/1.
        costs: ms per image of each of the tier's stages.
        lam: balanced-accuracy points (as fractions) traded per ms of mean cost per image.
        edges: inner band edges of ``z_before``.
        n_total: images the mean cost is over (default N): all images, not only those reaching the tier.

    Returns:
        A fitted router with one rule per band.

    Examples:
        >>> y = np.array([1, 0, 1, 0])
        >>> zb = np.array([0.5, -0.5, 0.5, -0.5])
        >>> r = fit_router(zb, np.array([-0.1, 0.1, -0.1, 0.1]), {"cones": np.array([1.0, -1.0, 1.0, -1.0])}, y,
        ...                {"cones": 10.0}, lam=0.001, edges=[0.0])
        >>> [rule.stages for rule in r.rules]
        [('cones',), ('cones',)]
    """
    y = np.asarray(labels, int)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    # Each image's share of balanced accuracy: getting a positive right is worth 1 / (2 P).
    worth = np.where(y == 1, 0.5 / n_pos, 0.5 / n_neg)
    n_total = len(y) if n_total is None else n_total
    names = list(contrib)
    bands = [-math.inf, *edges, math.inf]
    rules = []
    for lo, hi in zip(bands[:-1], bands[1:]):
        idx = np.flatnonzero((z_before >= lo) & (z_before < hi))
        base = float((worth[idx] * ((base_z[idx] > 0).astype(int) == y[idx])).sum())
        best = (0.0, (), 0.0, 0.0)
        for r in range(1, len(names) + 1):
            for subset in itertools.combinations(names, r):
                z = base_z[idx] + sum(contrib[s][idx] for s in subset)
                gain = float((worth[idx] * ((z > 0).astype(int) == y[idx])).sum()) - base
                cost = sum(costs[s] for s in subset) * len(idx) / max(n_total, 1)
                if gain - lam * cost > best[0] + 1e-12:
                    best = (gain - lam * cost, subset, gain, cost)
        _, subset, g, c = best
        reason = (f"fitted: {'+'.join(subset) or 'no stage'} gains {100 * g:.2f} balanced-accuracy points for "
                  f"{c:.2f} ms per image overall ({len(idx)} of {n_total} fitting images in the band)")
        rules.append(RouteRule(z=(lo, hi), stages=subset, reason=reason))
    return RouterConfig(rules=tuple(rules), fitted=True, summary={"lam": lam, "edges": [float(e) for e in edges],
                                                                  "n": int(n_total)})


def plan_routes(router: RouterConfig | None, tier_name: str, stage_names: Sequence[str], pending: Sequence[int],
                z: Sequence[float], reports: Sequence[Sequence[StageReport]]
                ) -> tuple[dict[str, list[int]], dict[int, str]]:
    """Which pending images each stage of a tier runs on, and the routing note of each image.

    Args:
        router: the tier's router (None or disabled: every stage on every image, no notes).
        pending: indices of the undecided images.
        z: per pending image (same order), its fused log-odds before the tier.
        reports: per pending image, the reports gathered so far.

    Returns:
        (stage name -> image indices, image index -> "tier: ran ... (reason)").
    """
    if router is None or not router.enabled:
        return {s: list(pending) for s in stage_names}, {}
    runs: dict[str, list[int]] = {s: [] for s in stage_names}
    notes: dict[int, str] = {}
    for i, zi, reps in zip(pending, z, reports):
        chosen, why = choose_stages(router, route_state(zi, reps), stage_names)
        for s in chosen:
            runs[s].append(i)
        skipped = [s for s in stage_names if s not in chosen]
        notes[i] = (f"{tier_name}: ran {', '.join(chosen) or 'no stage'}"
                    + (f", skipped {', '.join(skipped)}" if skipped else "") + f" ({why})")
    return runs, notes
