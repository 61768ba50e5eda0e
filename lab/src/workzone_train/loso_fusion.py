"""Leave-one-source-out of the fused fast tiers: classifier + cone detector + sign OCR.

:mod:`workzone_train.loso` scores the classifier alone. The shipped cascade decides with the
classifier *and* the detector (and OCR), fused by logistic regression, so its held-out behaviour
is that of the fusion. Here, for each left-out source: the classifier and the detector trained
without it score every image, the fusion weights are fitted on the dev split of the *other*
sources (as `workzone tune` would be, had the source not existed), and the left-out source is
scored at fused p > 0.5.

The detector never sees WMaia9 (it has no boxes), so the shipped detector is a valid
"without WMaia9" one; a "without CamVid" detector is trained with
``workzone train detector --exclude-source CamVid --scene-source TraCon --scene-source 99succubus``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from workzone.errors import ConfigError
from workzone_train.data import Sample, load_pixels, load_samples
from workzone_train.loop import binary_metrics

__all__ = ["classifier_logits", "stage_log_odds", "fuse_held_out", "run_loso_fusion"]


def classifier_logits(checkpoint: str | Path, recipe: str, pixels: Sequence[np.ndarray], *, device: str = "cpu") -> np.ndarray:
    """Logits of a training checkpoint (``train``/``loso`` ``.pt``) on un-augmented images."""
    import torch

    from workzone_train.loop import predict_logits, recipe_from_name
    from workzone_train.model import build_model

    rec = recipe_from_name(recipe)
    model = build_model(rec.arch, pretrained=False, dropout=rec.dropout)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval().to(device)
    return predict_logits(model, pixels, size=rec.size, mode=rec.resize, device=device)  # type: ignore[arg-type]


def stage_log_odds(kind: str, params: dict, paths: Sequence[Path], *, progress: Callable[[int], None] | None = None
                   ) -> list[float | None]:
    """Log-odds of one registered stage (e.g. ``roadwork_detector``, ``sign_ocr``) per image file."""
    from workzone.io.images import decode_image
    from workzone.stages.registry import create_stage

    async def go() -> list[float | None]:
        stage = create_stage(kind, kind, params)
        await stage.load()
        out: list[float | None] = []
        try:
            for i, p in enumerate(paths):
                out.append((await stage.predict([decode_image(str(p))]))[0].log_odds)
                if progress is not None:
                    progress(i + 1)
        finally:
            await stage.aclose()
        return out

    return asyncio.run(go())


def fuse_held_out(samples: Sequence[Sample], scores: Mapping[str, Sequence[float | None]], held_out: str, *,
                  balanced: bool = False) -> dict:
    """Fit fusion on the other sources' dev rows; score ``held_out`` (all its rows) at p > 0.5.

    Args:
        samples: every scored sample (train and dev of all sources).
        scores: stage name -> log-odds per sample (None = abstained).
        held_out: the left-out source.
        balanced: fit for a 50/50 prior instead of the fitting rows' class mix.

    Returns:
        ``{"stages", "fusion": {bias, weights}, "held_out": metrics, "dev_others": metrics}``.
    """
    from workzone.fusion.calibration import fit_fusion, fused_log_odds

    names = list(scores)
    rows = [{n: scores[n][i] for n in names} for i in range(len(samples))]
    y = np.array([s.label for s in samples])
    fit = [i for i, s in enumerate(samples) if s.split == "dev" and s.source != held_out]
    held = [i for i, s in enumerate(samples) if s.source == held_out]
    fusion = fit_fusion([rows[i] for i in fit], y[fit], names, balanced=balanced)
    z_held = fused_log_odds([rows[i] for i in held], fusion)
    z_fit = fused_log_odds([rows[i] for i in fit], fusion)
    return {
        "stages": names,
        "fusion": {"bias": round(fusion.bias, 4), "weights": {k: round(v, 4) for k, v in fusion.weights.items()}},
        "held_out": binary_metrics(y[held], z_held),
        "dev_others": binary_metrics(y[fit], z_fit),
    }


def run_loso_fusion(
    manifest: str | Path,
    classifiers: Mapping[str, Sequence[str | Path]],
    detectors: Mapping[str, str | Path],
    *,
    recipe: str = "partial",
    ocr: bool = True,
    device: str = "cpu",
    balanced: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Fused leave-one-source-out for each source that has classifiers (and a detector) trained without it.

    Args:
        manifest: the data set's manifest (train and dev rows are scored).
        classifiers: left-out source -> checkpoints of classifiers trained without it; several
            are fused as an ensemble (one stage each, named ``classifier``, ``classifier_2``...).
        detectors: left-out source -> ``cone_detector.onnx`` trained without it.
        recipe: the classifiers' recipe (architecture and input size).
        ocr: also fuse the sign-OCR stage (needs the ``ocr`` dependencies).
        device: torch device for the classifiers.
        balanced: fit the fusions for a 50/50 prior (``workzone tune --balanced``).
        log: where progress lines go.

    Returns:
        ``{source: {"classifiers": ..., "classifiers+cones": ..., "classifiers+cones+signs": ...,
        "each_classifier": [...]}}``.
    """
    missing = sorted(set(classifiers) - set(detectors))
    if missing:
        raise ConfigError(f"--detector: none given for {missing}; pass a detector trained without every source that "
                          "has a classifier (e.g. --detector CamVid=runs/det_nocamvid/cone_detector.onnx)")
    samples = load_samples(manifest, splits=("train", "dev"))
    paths = [s.path for s in samples]
    pixels = [load_pixels(p) for p in paths]
    signs = stage_log_odds("sign_ocr", {}, paths) if ocr else None
    out: dict = {}
    for source, ckpts in classifiers.items():
        log(f"without {source}: scoring {len(samples)} images")
        scores: dict[str, Sequence[float | None]] = {}
        each = []
        for k, ckpt in enumerate(ckpts):
            name = "classifier" if k == 0 else f"classifier_{k + 1}"
            scores[name] = classifier_logits(ckpt, recipe, pixels, device=device)
            alone = fuse_held_out(samples, {name: scores[name]}, source, balanced=balanced)
            alone["checkpoint"] = str(ckpt)
            alone["raw_logit_0"] = binary_metrics([s.label for s in samples if s.source == source],
                                                  np.asarray(scores[name])[[s.source == source for s in samples]])
            each.append(alone)
        res: dict = {"each_classifier": each, "classifiers": fuse_held_out(samples, scores, source, balanced=balanced)}
        scores["cones"] = stage_log_odds("roadwork_detector", {"model": str(detectors[source])}, paths)
        res["cones"] = fuse_held_out(samples, {"cones": scores["cones"]}, source, balanced=balanced)
        res["classifiers+cones"] = fuse_held_out(samples, scores, source, balanced=balanced)
        if signs is not None:
            scores["signs"] = signs
            res["classifiers+cones+signs"] = fuse_held_out(samples, scores, source, balanced=balanced)
        out[source] = res
        for e in each:
            m, r = e["held_out"], e["raw_logit_0"]
            log(f"  {Path(e['checkpoint']).name:44s} recall {m['recall']:.3f} specificity {m['specificity']:.3f} "
                f"(raw logit>0: {r['recall']:.3f} / {r['specificity']:.3f})")
        for k in ("classifiers", "cones", "classifiers+cones", "classifiers+cones+signs"):
            if k in res:
                m = res[k]["held_out"]
                log(f"  {k:44s} recall {m['recall']:.3f} specificity {m['specificity']:.3f} "
                    f"| dev of others MCC {res[k]['dev_others']['mcc']:.3f}")
    return out
