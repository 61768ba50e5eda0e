"""Leave-one-source-out (LOSO) evaluation, per-source dev metrics, day/night split, error table.

Why LOSO: dev shares cameras with train, so dev rewards learning the camera. A model trained
without WMaia9 must still find WMaia9's US work zones, and one trained without CamVid must still
pass CamVid's UK streets; that is the closest this data set comes to the held-out test (real
dashcam images from other sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from workzone_train.data import Sample, is_low_light, load_pixels, load_samples
from workzone_train.loop import Recipe, binary_metrics, predict_logits, prepare_data, train_model

__all__ = ["HOLDOUTS", "evaluate_samples", "run_loso", "train_splits", "format_table"]

# Left-out source -> the metric that matters for it (the acceptance targets).
HOLDOUTS: dict[str, str] = {"WMaia9-workzone": "recall", "CamVid": "specificity"}


def train_splits(recipe: Recipe) -> tuple[str, ...]:
    """The manifest splits a recipe trains on."""
    return ("train", "extra-train") if recipe.use_extra else ("train",)


def evaluate_samples(
    samples: Sequence[Sample], logits: np.ndarray, pixels: Sequence[np.ndarray] | None = None, *, max_errors: int = 40
) -> dict:
    """Overall, per-source and day/night metrics plus the remaining errors, worst first.

    Args:
        samples: the evaluated samples.
        logits: their road-work logits (N,).
        pixels: their images, for the luminance part of the night test.
        max_errors: rows kept in the error table.
    """
    labels = [s.label for s in samples]
    out: dict = {"overall": binary_metrics(labels, logits), "per_source": {}, "light": {}}
    for src in sorted({s.source for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.source == src]
        out["per_source"][src] = binary_metrics([labels[i] for i in idx], logits[idx])
    night = np.array([is_low_light(s, None if pixels is None else pixels[i]) for i, s in enumerate(samples)], dtype=bool)
    for name, mask in (("day", ~night), ("night_or_dusk", night)):
        if mask.any():
            out["light"][name] = binary_metrics(np.asarray(labels)[mask], logits[mask])
    wrong = [i for i, s in enumerate(samples) if (logits[i] > 0) != (s.label == 1)]
    wrong.sort(key=lambda i: -abs(float(logits[i])))
    out["errors"] = [
        {"path": samples[i].rel, "source": samples[i].source, "label": samples[i].label, "logit": round(float(logits[i]), 3),
         "night": bool(night[i]), "notes": samples[i].notes[:80]}
        for i in wrong[:max_errors]
    ]
    return out


def run_loso(
    manifest: str | Path,
    recipe: Recipe,
    *,
    seed: int = 0,
    device: str = "cuda",
    workers: int = 8,
    weights_path: str | None = None,
    holdouts: Sequence[str] = tuple(HOLDOUTS),
    with_full: bool = True,
    log: Callable[[str], None] = print,
    on_model: Callable[[str, object], None] | None = None,
) -> dict:
    """Train once per left-out source (and once on everything), and score each.

    Args:
        manifest: the data set's manifest (boxes.csv beside it is used for synthesis).
        recipe: what to train.
        seed: training seed.
        device: torch device.
        workers: loader workers.
        weights_path: ImageNet weights override.
        holdouts: sources to leave out, one training each.
        with_full: also train on all training sources and score dev.
        log: where progress lines go.
        on_model: called as ``on_model(tag, model)`` after each training (to save checkpoints).

    Returns:
        ``{"recipe": ..., "loso": {source: {...}}, "dev": {...}}``.
    """
    manifest = Path(manifest)
    boxes = manifest.parent / "boxes.csv"
    result: dict = {"recipe": recipe.to_dict(), "seed": seed, "loso": {}}
    runs = [(h, [h]) for h in holdouts] + ([("full", [])] if with_full else [])
    for tag, excluded in runs:
        train = load_samples(manifest, splits=train_splits(recipe), exclude_sources=excluded)
        data = prepare_data(train, boxes, erase=recipe.erase_neg > 0)
        log(f"[{recipe.name}] {tag}: {len(train)} train images, {len(data.cutouts)} cone cutouts")
        model = train_model(data, recipe, seed=seed, device=device, workers=workers, weights_path=weights_path)
        if on_model is not None:
            on_model(tag, model)
        if tag == "full":
            evals = load_samples(manifest, splits=("dev",))
        else:
            # Every image of the left-out source (train and dev), plus dev of the others.
            evals = load_samples(manifest, splits=("train", "dev"), apply_fixes=True)
            evals = [s for s in evals if s.source == tag or s.split == "dev"]
        pixels = [load_pixels(s.path) for s in evals]
        logits = predict_logits(model, pixels, size=recipe.size, mode=recipe.resize, device=device)  # type: ignore[arg-type]
        if tag == "full":
            result["dev"] = evaluate_samples(evals, logits, pixels)
            log(f"[{recipe.name}] full: dev MCC {result['dev']['overall']['mcc']:.3f}")
        else:
            held = [i for i, s in enumerate(evals) if s.source == tag]
            rest = [i for i, s in enumerate(evals) if s.source != tag]
            held_eval = evaluate_samples([evals[i] for i in held], logits[held], [pixels[i] for i in held])
            rest_eval = evaluate_samples([evals[i] for i in rest], logits[rest], [pixels[i] for i in rest], max_errors=0)
            result["loso"][tag] = {"held_out": held_eval["overall"], "held_out_errors": held_eval["errors"][:15],
                                   "dev_others": rest_eval["overall"]}
            m = held_eval["overall"]
            log(f"[{recipe.name}] without {tag}: recall {m['recall']:.3f} specificity {m['specificity']:.3f} "
                f"| dev of others MCC {rest_eval['overall']['mcc']:.3f}")
    return result


def format_table(results: Sequence[dict]) -> list[list[str]]:
    """Rows (recipe, LOSO WMaia9 recall, LOSO CamVid specificity, dev MCC, dev-others MCCs)."""
    rows = []
    for r in results:
        lo = r.get("loso", {})
        def _get(src: str, key: str) -> str:
            v = lo.get(src, {}).get("held_out", {}).get(key)
            return "-" if v is None else f"{v:.3f}"
        dev = r.get("dev", {}).get("overall", {}).get("mcc")
        rows.append([
            r["recipe"]["name"],
            _get("WMaia9-workzone", "recall"),
            _get("CamVid", "specificity"),
            "-" if dev is None else f"{dev:.3f}",
            " / ".join(f"{lo[s]['dev_others']['mcc']:.3f}" for s in lo),
        ])
    return rows
