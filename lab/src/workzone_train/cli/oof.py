"""``workzone train loso-scores`` and ``workzone train loso-table``: the ten-source leave-one-source-out evidence.

``loso-scores`` turns the out-of-fold detections of a detector LOSO run (GPU:
``workzone train objects-loso``, then ``objects-pack``) plus the lexicon OCR and the frozen-lr
baseline into one CSV of out-of-fold stage scores, and fits the detector's decision block.
``loso-table`` scores candidate stage sets on that CSV, with fusion cross-fitted over the folds,
and writes the pooled table; ``workzone tune --scores`` fits a pipeline's fusion and exits on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

__all__ = ["loso_scores", "loso_table"]


def loso_scores(
    data: Path = typer.Option(..., exists=True, file_okay=False, help="folder with roadwork-v1, roadwork-v2 (../shared/data)"),
    detections: Path = typer.Option(..., exists=True, dir_okay=False, help="oof_detections.json of a detector LOSO run"),
    out: Path = typer.Option(Path("oof_scores.csv"), help="CSV of out-of-fold stage scores"),
    detector_sidecar: Optional[Path] = typer.Option(None, help="write the fitted decision block into this sidecar JSON"),
    frozen_features: Optional[Path] = typer.Option(None, help="cache of frozen Lite0 features (.npz; computed when missing)"),
    ocr_cache: Optional[Path] = typer.Option(None, help="cache of sign-OCR log-odds (.json; computed when missing)"),
    verifier_cache: Optional[Path] = typer.Option(None, help="cache of embedded candidate crops (.npz; computed when "
                                                             "missing or made from other detections)"),
    verifier_out: Optional[Path] = typer.Option(None, help="also fit the shipped verifier on every crop and write "
                                                           "roadwork_verifier.onnx + .json into this folder"),
    verifier_augment: int = typer.Option(1, min=0, help="degraded copies of each labelled crop (night, fog, far, blur, "
                                                        "JPEG)"),
    verifier_run: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                                help="a `workzone train verifier-loso` run: its fine-tuned fold "
                                                     "models' probabilities replace the frozen verifier's, and "
                                                     "--verifier-out exports its full model"),
    verifier_context: float = typer.Option(2.0, min=1.0, max=8.0, help="the frozen verifier's crop side over the "
                                           "box's longer side; not used with --verifier-run (its pack's)"),
    verifier_head: str = typer.Option("linear", help="the frozen verifier's head: 'linear' (multinomial logistic "
                                                     "regression) or 'mlp' (one hidden layer); not used with "
                                                     "--verifier-run"),
    glance_detections: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                     help="out-of-fold detections of the same folds at a smaller "
                                                          "input (`workzone train objects-oof --size`): adds a "
                                                          "'glance' column, and with --detector-sidecar its decision "
                                                          "block for that size"),
    verify_features: str = typer.Option("blind", help="verified decision's features: 'classes' (class-aware) "
                                                        "or 'blind'"),
    hand_labels: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                               help="candidates named by eye, as given to `verifier-pack` for the "
                                                    "--verifier-run (the crop table must be the same)"),
) -> None:
    """Out-of-fold scores per image: objects (class-blind and per-class decisions), verify (the crop verifier's
    verified decision, class-aware and class-blind), signs and context (frozen-lr)."""
    from rich.console import Console

    from workzone.evaluation.loso_table import OofRow
    from workzone_train.corpus import load_corpus
    from workzone_train.frozen_lr import embed_images, fit_frozen_lr, frozen_lr_log_odds
    from workzone_train.loso_fusion import stage_log_odds
    from workzone_train.object_train import LOSO_FOLDS
    from workzone_train.oof_scores import (PER_CLASS_FEATURES, decision_scores, detection_input_size, fit_decision,
                                              object_feature_matrix, read_fold_detections, write_scores_csv)
    from workzone_train.scene_synth import OBJECT_CLASSES
    from workzone.evaluation.loso_table import cross_fit

    from workzone_train.verifier import VERIFIER_HEADS

    if verifier_head not in VERIFIER_HEADS:
        raise typer.BadParameter(f"{verifier_head!r}: use one of {', '.join(VERIFIER_HEADS)}", param_hint="--verifier-head")
    con = Console(stderr=True)
    corpus = load_corpus(data)
    fold_of = {s: f for f, srcs in LOSO_FOLDS.items() for s in srcs}
    unknown = sorted({s.source for s in corpus} - set(fold_of))
    if unknown:
        raise typer.BadParameter(f"sources without a fold: {unknown}; add them to LOSO_FOLDS")
    rows = [OofRow(s.key, s.source, s.condition, s.label, fold_of[s.source], {}) for s in corpus]
    y = np.array([r.label for r in rows])

    dets = read_fold_detections(detections)
    x = object_feature_matrix(corpus, dets, OBJECT_CLASSES)
    objects = decision_scores(rows, x)
    per_class = decision_scores(rows, object_feature_matrix(corpus, dets, OBJECT_CLASSES, PER_CLASS_FEATURES))
    from workzone_train.hand_labels import read_hand_labels
    from workzone_train.verifier import verify_oof_scores

    verify = verify_oof_scores(data, corpus, rows, dets, LOSO_FOLDS, cache=verifier_cache, export_to=verifier_out,
                               shipped_features=verify_features, augment=verifier_augment,
                               finetuned=verifier_run, head=verifier_head, log=con.print, context=verifier_context,
                               hand_labels=read_hand_labels(hand_labels) if hand_labels else None)
    glance = None
    if glance_detections is not None:
        x_glance = object_feature_matrix(corpus, read_fold_detections(glance_detections), OBJECT_CLASSES)
        glance = decision_scores(rows, x_glance)
    if detector_sidecar is not None:
        meta = json.loads(detector_sidecar.read_text(encoding="utf-8"))
        meta["decision"] = fit_decision(x, y)
        if glance is not None:
            size = str(detection_input_size(glance_detections))
            meta.setdefault("decisions_by_input_size", {})[size] = fit_decision(
                x_glance, y, fitted_on=f"out-of-fold detections at input size {size}, eleven sources")
        detector_sidecar.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        con.print(f"decision block written to {detector_sidecar}")

    if ocr_cache is not None and ocr_cache.exists():
        cached = json.loads(ocr_cache.read_text(encoding="utf-8"))
        signs = [cached[s.key] for s in corpus]
    else:
        con.print("reading signs on every image (sign_ocr) ...")
        signs = stage_log_odds("sign_ocr", {}, [s.path for s in corpus])
        if ocr_cache is not None:
            ocr_cache.write_text(json.dumps({s.key: v for s, v in zip(corpus, signs)}), encoding="utf-8")

    if frozen_features is not None and frozen_features.exists():
        blob = np.load(frozen_features)
        by_key = dict(zip(blob["keys"].tolist(), blob["feats"]))
        feats = np.stack([by_key[s.key] for s in corpus])
    else:
        con.print("embedding every image with frozen ImageNet Lite0 ...")
        feats = embed_images([s.path for s in corpus])
        if frozen_features is not None:
            np.savez(frozen_features, feats=feats, keys=np.array([s.key for s in corpus]))
    index = {r.key: i for i, r in enumerate(rows)}
    context = cross_fit(
        rows, lambda tr: fit_frozen_lr(feats[[index[r.key] for r in tr]], y[[index[r.key] for r in tr]]),
        lambda m, te: frozen_lr_log_odds(feats[[index[r.key] for r in te]], m))

    rows = [OofRow(r.key, r.source, r.condition, r.label, r.fold,
                   {"objects": float(objects[i]), "objects-classes": float(per_class[i]), "signs": signs[i],
                    "context": float(context[i]), **{k: float(v[i]) for k, v in verify.items()},
                    **({} if glance is None else {"glance": float(glance[i])})})
            for i, r in enumerate(rows)]
    write_scores_csv(rows, out)
    con.print(f"{len(rows)} images -> {out}")


def loso_table(
    scores: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV from `workzone train loso-scores`"),
    candidate: list[str] = typer.Option([], help="NAME=stage+stage (fusion cross-fitted over the folds); repeat"),
    cascade: list[str] = typer.Option([], help="NAME=PIPELINE.yaml[@BUDGET_MS]: the whole cascade, its fusions and "
                                               "exits tuned on the other folds (as `workzone tune --scores`), under "
                                               "its own mean cost budget if given; repeat"),
    max_cost: Optional[float] = typer.Option(None, min=0.0, help="mean cost budget (ms per image) the cascades are "
                                                                 "tuned under, from their stages' `cost:`"),
    exits_out_of_fold: bool = typer.Option(True, "--exits-out-of-fold/--exits-in-sample",
                                           help="the cascades' exits chosen as `workzone tune --scores` chooses "
                                                "them (out of fold), or on in-sample probabilities"),
    out: Path = typer.Option(Path("loso_table.md"), help="markdown table"),
    json_out: Optional[Path] = typer.Option(None, help="also the full numbers as JSON"),
    prior_weight: float = typer.Option(1.0, help="fusion weight prior (see `workzone tune --prior-weight`)"),
    balanced: bool = typer.Option(True, "--balanced/--no-balanced", help="fit fusion for a 50/50 prior (as `tune --balanced`)"),
    l2: float = typer.Option(1e-2, min=0.0),
    fold_column: str = typer.Option("fold", help="column grouping sources into held-out folds (source: one per source)"),
    condition_column: str = typer.Option("condition", help="column the per-condition table groups by"),
) -> None:
    """Pooled out-of-fold MCC, per source and per condition, for each candidate stage set."""
    from workzone.evaluation.loso_table import cross_fit, format_markdown, loso_summary, read_oof_rows
    from workzone.fusion.calibration import fit_logistic, score_matrix

    rows = read_oof_rows(scores, fold_column=fold_column, condition_column=condition_column)
    summaries = {}
    for spec in candidate:
        name, _, stages = spec.partition("=")
        names = [s for s in stages.split("+") if s]
        if not names or any(n not in rows[0].scores for n in names):
            raise typer.BadParameter(f"candidate {spec!r}: stages must be among {sorted(rows[0].scores)}")

        def fit(train, names=names):  # noqa: ANN001, ANN202
            return fit_logistic(score_matrix([r.scores for r in train], names), np.array([r.label for r in train]),
                                l2=l2, balanced=balanced, prior=prior_weight)

        def predict(model, test, names=names):  # noqa: ANN001, ANN202
            return model.bias + score_matrix([r.scores for r in test], names) @ model.weights

        summaries[name] = loso_summary(rows, cross_fit(rows, fit, predict))
    for spec in cascade:
        name, _, pipeline = spec.partition("=")
        budget = max_cost
        head, at, tail = pipeline.rpartition("@")
        if at and tail.replace(".", "", 1).isdigit():
            pipeline, budget = head, float(tail)
        summaries[name] = _cascade_summary(rows, Path(pipeline), max_cost=budget, l2=l2, balanced=balanced,
                                           prior_weight=prior_weight, exits_out_of_fold=exits_out_of_fold)
    if not summaries:
        raise typer.BadParameter("name at least one --candidate or --cascade")
    sources = sorted({r.source for r in rows})
    conditions = sorted({r.condition for r in rows})
    text = format_markdown(summaries, sources, conditions)
    out.write_text(text, encoding="utf-8")
    if json_out is not None:
        json_out.write_text(json.dumps(summaries, indent=2, default=float) + "\n", encoding="utf-8")
    typer.echo(text)


def _cascade_summary(rows, pipeline: Path, **tune) -> dict:  # noqa: ANN001 - rows: OofRow list
    """:func:`loso_summary` of a pipeline tuned out of fold, plus where its images left and what they cost."""
    from workzone.config import load_pipeline_config
    from workzone.evaluation.loso_table import loso_summary
    from workzone_train.cascade_oof import cross_fitted_cascade

    config, _ = load_pipeline_config(pipeline)
    got = cross_fitted_cascade(config, rows, **tune)
    out = loso_summary(rows, got.log_odds)
    out["cascade"] = {"tiers": [t.name for t in config.tiers], "exit_rates": [round(r, 4) for r in got.exit_rates(len(config.tiers))],
                      "mean_cost_ms": round(float(got.cost_ms.mean()), 2), "max_cost_ms": tune.get("max_cost")}
    return out
