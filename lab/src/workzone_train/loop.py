"""Training recipes, the mixed real + synthetic data set, the training loop and batch prediction.

Reproducibility: every random draw depends only on (seed, epoch, sample index): the epoch plan is
drawn from ``default_rng([seed, epoch])`` and each sample's augmentation from
``default_rng([seed, epoch, index])``, so the loader's worker count does not change the data.
GPU kernels are not bit-deterministic, so weights from two runs agree closely, not exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from workzone.evaluation.metrics import confusion, matthews_corrcoef
from workzone.io.images import ResizeMode, resize_for_model
from workzone_train.augment import AugmentConfig, augment_image
from workzone_train.data import Sample, load_pixels, read_boxes
from workzone_train.erase import decoy_erase, erase_work_zone
from workzone_train.hoods import clip_key, context_crop, crop_bottom, dashcam_strips, paste_strip
from workzone_train.synth import Cutout, cut_cones, paste_distractors, paste_work_zone

__all__ = ["Recipe", "RECIPES", "TrainData", "prepare_data", "train_model", "predict_logits", "binary_metrics"]

# Sources that give negative scenes to paste cones into (dashcam and stock roads).
_BACKGROUND_SOURCES = ("CamVid", "TraCon", "99succubus")


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run besides the data and the seed."""

    name: str
    arch: str = "efficientnet_lite0"
    tune: str = "partial"  # frozen | partial | full
    partial_blocks: int = 6
    epochs: int = 14
    epoch_size: int = 2400
    batch_size: int = 64
    lr_head: float = 2e-3
    lr_body: float = 4e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.3
    synth_pos: float = 0.25  # fraction of each epoch that is pasted-cone positives
    synth_neg: float = 0.12  # fraction that is pasted-distractor negatives
    use_extra: bool = False  # Glisten-zy product photos (they strengthen the cone shortcut)
    p_props: float = 0.0  # share of pasted positives that are drawn props (drums, signs...) instead of cones
    hood: bool = False  # decorrelate dashcam hoods from the label (see training/hoods.py)
    context_neg: float = 0.0  # fraction that is object-free parts of positive images, labelled 0
    erase_neg: float = 0.0  # fraction that is positives with their work-zone colours erased, labelled 0 (erase.py)
    decoy: float = 0.0  # chance that any other image gets label-free smudges like the erasures
    size: int = 224
    resize: str = "squash"  # inference resize mode written to the sidecar
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        """JSON-friendly form (for the sidecar and the results files)."""
        return asdict(self)


# The "hp" recipes: 35 % pasted work zones, half of them drawn props, and dashcam hoods decorrelated.
_HP = {"synth_pos": 0.35, "p_props": 0.5, "hood": True}

RECIPES: dict[str, Recipe] = {
    "frozen": Recipe("frozen", tune="frozen", lr_head=3e-3, epochs=10),
    "partial": Recipe("partial", tune="partial"),
    "full": Recipe("full", tune="full", lr_body=2e-4),
    "full-nosynth": Recipe("full-nosynth", tune="full", lr_body=2e-4, synth_pos=0.0, synth_neg=0.0),
    "partial-synth": Recipe("partial-synth", tune="partial", epochs=12, synth_pos=0.4, synth_neg=0.15),
    "partial-deep": Recipe("partial-deep", tune="partial", partial_blocks=10, epochs=12, lr_body=3e-4,
                           synth_pos=0.4, synth_neg=0.15),
    "partial-hood": Recipe("partial-hood", tune="partial", hood=True),
    "partial-props": Recipe("partial-props", tune="partial", synth_pos=0.35, p_props=0.5),
    "partial-hp": Recipe("partial-hp", tune="partial", **_HP),
    "full-hp": Recipe("full-hp", tune="full", lr_body=2e-4, **_HP),
    "partial8-hp": Recipe("partial8-hp", tune="partial", partial_blocks=8, **_HP),
    "partial-hpc": Recipe("partial-hpc", tune="partial", context_neg=0.08, **_HP),
    "full-hpc": Recipe("full-hpc", tune="full", lr_body=2e-4, context_neg=0.08, **_HP),
    "partial-hpe": Recipe("partial-hpe", tune="partial", erase_neg=0.1, decoy=0.15, **_HP),
    "partial-hpe2": Recipe("partial-hpe2", tune="partial", erase_neg=0.2, decoy=0.25, **_HP),
    "full-hpe": Recipe("full-hpe", tune="full", lr_body=2e-4, erase_neg=0.1, decoy=0.15, **_HP),
}


@dataclass
class TrainData:
    """Decoded training images, cone cutouts and synthesis backgrounds."""

    samples: list[Sample]
    pixels: list[np.ndarray]
    keep_points: list[list[tuple[float, float]]]
    cutouts: list[Cutout]
    backgrounds: dict[str, list[int]]  # source -> indices into samples of negative scenes
    strips: list[np.ndarray] = field(default_factory=list)  # bottom strips of dashcam frames (hoods)
    dashcam: set[int] = field(default_factory=set)  # indices of samples that are dashcam frames
    erased: dict[int, np.ndarray] = field(default_factory=dict)  # positive index -> it with the work zone erased


def prepare_data(samples: Sequence[Sample], boxes_csv: str | Path | None, *, erase: bool = False) -> TrainData:
    """Decode ``samples`` and cut cones out of their boxed images.

    Args:
        samples: training samples (already filtered for leave-one-source-out).
        boxes_csv: the data set's boxes.csv, or None for no copy-paste synthesis.
        erase: also make the erased-work-zone negatives (recipes with ``erase_neg``).
    """
    pixels = [load_pixels(s.path) for s in samples]
    boxes = read_boxes(boxes_csv) if boxes_csv is not None and Path(boxes_csv).exists() else {}
    keep = []
    for s, px in zip(samples, pixels):
        h, w = px.shape[:2]
        keep.append([(b.cx * w, b.cy * h) for b in boxes.get(s.rel, [])])
    boxed = {s.rel: px for s, px in zip(samples, pixels) if s.label == 1 and s.rel in boxes}
    cutouts = cut_cones(boxed, boxes)
    backgrounds: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.label == 0 and s.source in _BACKGROUND_SOURCES:
            backgrounds.setdefault(s.source, []).append(i)
    strips, dashcam = dashcam_strips([clip_key(s.source, s.rel) for s in samples], pixels)
    data = TrainData(list(samples), pixels, keep, cutouts, backgrounds, strips, dashcam)
    if erase:
        for i, (s, px) in enumerate(zip(samples, pixels)):
            if s.label == 1:
                out = erase_work_zone(px, np.random.default_rng([i, 11]))
                if out is not None:
                    data.erased[i] = out
    return data


def _epoch_plan(data: TrainData, recipe: Recipe, seed: int, epoch: int) -> np.ndarray:
    """(kind, index) rows for one epoch: 0 real, 1 pasted work zone, 2 pasted distractors, 3 context negative,
    4 erased work zone.

    Real samples are balanced over (source, label) groups with a share growing with the square
    root of the group's size: large groups do not swamp small ones, and the three WMaia9
    negatives are not repeated hundreds of times.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    groups: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(data.samples):
        groups.setdefault((s.source, s.label), []).append(i)
    keys = sorted(groups)
    share = np.array([math.sqrt(len(groups[k])) for k in keys])
    share /= share.sum()
    can_synth = bool(data.cutouts) and bool(data.backgrounds)
    n_pos = int(recipe.epoch_size * recipe.synth_pos) if can_synth else 0
    n_neg = int(recipe.epoch_size * recipe.synth_neg) if can_synth else 0
    ctx = [i for i, s in enumerate(data.samples) if s.label == 1 and i in data.dashcam]
    n_ctx = int(recipe.epoch_size * recipe.context_neg) if ctx else 0
    erased = sorted(data.erased)
    n_erase = int(recipe.epoch_size * recipe.erase_neg) if erased else 0
    n_real = recipe.epoch_size - n_pos - n_neg - n_ctx - n_erase
    counts = rng.multinomial(n_real, share)
    rows = []
    for k, c in zip(keys, counts):
        rows += [(0, int(i)) for i in rng.choice(groups[k], size=c)]
    bg_sources = sorted(data.backgrounds)
    for kind, n in ((1, n_pos), (2, n_neg)):
        for _ in range(n):
            src = bg_sources[int(rng.integers(len(bg_sources)))]
            rows.append((kind, int(rng.choice(data.backgrounds[src]))))
    rows += [(3, int(i)) for i in rng.choice(ctx, size=n_ctx)] if n_ctx else []
    rows += [(4, int(i)) for i in rng.choice(erased, size=n_erase)] if n_erase else []
    plan = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return plan[rng.permutation(len(plan))]


class _EpochSet:
    """A map-style data set over one epoch plan (torch's Dataset protocol: len + getitem)."""

    def __init__(self, data: TrainData, recipe: Recipe, plan: np.ndarray, seed: int, epoch: int) -> None:
        self.data, self.recipe, self.plan, self.seed, self.epoch = data, recipe, plan, seed, epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.float32]:
        kind, idx = (int(v) for v in self.plan[i])
        rng = np.random.default_rng([self.seed, self.epoch, i])
        d, cfg = self.data, self.recipe.augment
        if kind == 4:
            img, _ = self._hood(d.erased[idx], idx, [], rng)
            return augment_image(img, rng, cfg), np.float32(0)
        if kind == 0:
            s = d.samples[idx]
            img, keep = self._hood(self._decoy(d.pixels[idx], rng), idx, d.keep_points[idx], rng)
            # Positives without boxes (WMaia9) keep a larger crop so the work zone stays in view.
            min_area = cfg.min_crop_area if (s.label == 0 or keep) else 0.45
            x = augment_image(img, rng, cfg, keep_points=keep, min_crop_area=min_area)
            return x, np.float32(s.label)
        if kind == 3:
            return augment_image(context_crop(d.pixels[idx], rng), rng, cfg), np.float32(0)
        scene, _ = self._hood(d.pixels[idx], idx, [], rng)
        if kind == 1:
            img, centres = paste_work_zone(scene, d.cutouts, rng, p_cones=1.0 - self.recipe.p_props)
            if centres:
                return augment_image(self._decoy(img, rng), rng, cfg, keep_points=centres), np.float32(1)
            return augment_image(scene, rng, cfg), np.float32(0)
        img = paste_distractors(scene, d.cutouts, rng)
        return augment_image(img, rng, cfg), np.float32(0)

    def _decoy(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Smudges like the erasures' on images whose label they do not change, so a smudge means nothing."""
        if self.recipe.decoy and rng.random() < self.recipe.decoy:
            return decoy_erase(img, rng)
        return img

    def _hood(
        self, img: np.ndarray, idx: int, keep: list[tuple[float, float]], rng: np.random.Generator
    ) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """Crop the hood off half the dashcam frames; paste a hood strip onto 40 % of the other images.

        A strip is not pasted over the only cones of a boxed positive (that would change its label).
        """
        d = self.data
        if not self.recipe.hood or not d.strips:
            return img, keep
        if idx in d.dashcam:
            return (crop_bottom(img, rng), keep) if rng.random() < 0.5 else (img, keep)
        if rng.random() < 0.4:
            h = img.shape[0]
            above = [p for p in keep if p[1] < 0.7 * h]
            if keep and not above:
                return img, keep
            return paste_strip(img, d.strips[int(rng.integers(len(d.strips)))], rng), above
        return img, keep


def _collate(batch):  # noqa: ANN001, ANN202 - torch is imported lazily
    import torch

    xs, ys = zip(*batch)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.array(ys, dtype=np.float32))


def train_model(
    data: TrainData,
    recipe: Recipe,
    *,
    seed: int = 0,
    device: str = "cuda",
    workers: int = 8,
    weights_path: str | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
):  # noqa: ANN201 - returns a torch module
    """Train one model.

    Args:
        data: prepared training data.
        recipe: the recipe.
        seed: seeds the weights of the head, the epoch plans and the augmentation.
        device: ``cuda`` or ``cpu``.
        workers: data-loader worker processes (0 runs in the main process).
        weights_path: ImageNet weights file overriding the weights package's.
        progress: called as ``progress(step, total_steps, info)`` after every step.

    Returns:
        The trained model, in eval mode, on ``device``.
    """
    import torch

    from workzone_train.model import build_model, set_train_mode, trainable_parameters

    torch.manual_seed(seed)
    model = build_model(recipe.arch, weights_path=weights_path, dropout=recipe.dropout).to(device)
    body, head = trainable_parameters(model, recipe.tune, partial_blocks=recipe.partial_blocks)  # type: ignore[arg-type]
    groups = [{"params": head, "lr": recipe.lr_head}]
    if body:
        groups.append({"params": body, "lr": recipe.lr_body})
    opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(recipe.epoch_size / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warm = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    use_amp = device.startswith("cuda")
    step = 0
    for epoch in range(recipe.epochs):
        plan = _epoch_plan(data, recipe, seed, epoch)
        loader = torch.utils.data.DataLoader(
            _EpochSet(data, recipe, plan, seed, epoch),
            batch_size=recipe.batch_size,
            shuffle=False,  # the plan is already shuffled, reproducibly
            num_workers=workers,
            collate_fn=_collate,
            drop_last=False,
        )
        set_train_mode(model, recipe.tune, partial_blocks=recipe.partial_blocks)  # type: ignore[arg-type]
        t0 = time.time()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device)
            target = y * (1 - recipe.label_smoothing) + 0.5 * recipe.label_smoothing
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = loss_fn(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None:
                progress(step, total, {"epoch": epoch, "loss": float(loss), "sec": time.time() - t0})
    model.eval()
    return model


def predict_logits(
    model,  # noqa: ANN001 - a torch module
    pixels: Sequence[np.ndarray],
    *,
    size: int = 224,
    mode: ResizeMode = "squash",
    device: str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Road-work logits of un-augmented images, resized with the inference function.

    Args:
        model: the torch model (eval mode).
        pixels: uint8 RGB images (H, W, 3).
        size: model input side.
        mode: resize mode, as at inference.
        device: where the model lives.
        batch_size: images per forward pass.

    Returns:
        float32 array (N,).
    """
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(pixels), batch_size):
            x = np.stack([resize_for_model(p, size, mode) for p in pixels[i : i + batch_size]])
            out.append(model(torch.from_numpy(x).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.0) -> dict[str, float]:
    """MCC, recall, specificity, accuracy and counts at ``threshold`` (logits: 0 = p 0.5).

    Examples:
        >>> binary_metrics([1, 0, 1, 0], [2.0, -1.0, 0.5, 0.3])["recall"]
        1.0
    """
    y = np.asarray(labels, dtype=np.int64)
    p = (np.asarray(scores, dtype=np.float64) > threshold).astype(np.int64)
    tp, fp, tn, fn = confusion(y, p)
    return {
        "mcc": matthews_corrcoef(y, p),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "accuracy": (tp + tn) / max(1, len(y)),
        "n": len(y),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def recipe_from_name(name: str, **overrides) -> Recipe:  # noqa: ANN003 - recipe fields
    """A named recipe with some fields replaced (``epochs=3``)."""
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
