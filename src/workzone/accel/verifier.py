"""The candidate verifier's closer look on the torch device: crops cut from the decoded images there, one batched run.

On the CPU the ``object_verifier`` stage crops each candidate with Pillow and runs onnxruntime image by image; on
a GPU host the decoded images already live on the device (:class:`~workzone.accel.device_image.DeviceImage`),
and copying them back to crop on the CPU would cost more than the verifier. :class:`DeviceCropVerifier` cuts every
candidate of a batch with Pillow's pixels (:func:`~workzone.accel.crops.crops_like_pillow`) and runs the
verifier's graph over all of them at once (:class:`~workzone.accel.runner.TorchModelRunner`). Only the class
probabilities ([M, C] floats) come back to the host, where the stage forms the verified decision and its evidence
exactly as on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from workzone.accel.crops import crop_windows, crops_like_pillow
from workzone.accel.device_image import image_tensor
from workzone.types import Image

if TYPE_CHECKING:
    from workzone.accel.runner import TorchModelRunner

__all__ = ["DeviceCropVerifier"]


class DeviceCropVerifier:
    """Class probabilities of candidate boxes, the crops and the network on the runner's device.

    Args:
        runner: the verifier graph (input ``crops`` [N, 3, S, S] in [0, 1], output probabilities [N, C]).
        size: the crop side S.
        context: window side over the box's longer side.
        max_side: the longest image side the verifier was trained at (see :func:`~workzone.accel.crops.crop_windows`).
    """

    def __init__(self, runner: "TorchModelRunner", *, size: int, context: float, max_side: int | None) -> None:
        self.runner = runner
        self.size = size
        self.context = context
        self.max_side = max_side

    def probabilities(self, images: Sequence[Image], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image, the (n_i, C) float64 probabilities of its (n_i, 4) boxes x1, y1, x2, y2 (image pixels)."""
        import torch

        counts = [len(b) for b in boxes]
        if not sum(counts):
            return [np.zeros((0, 0)) for _ in boxes]
        todo = [i for i, n in enumerate(counts) if n]
        tensors = [image_tensor(images[i], self.runner.device) for i in todo]
        owner = np.repeat(np.arange(len(todo)), [counts[i] for i in todo])
        xyxy = np.concatenate([np.asarray(boxes[i], np.float64).reshape(-1, 4) for i in todo])
        heights = np.array([int(t.shape[1]) for t in tensors])[owner]
        widths = np.array([int(t.shape[2]) for t in tensors])[owner]
        windows = crop_windows(xyxy, heights, widths, context=self.context, max_side=self.max_side)
        with torch.inference_mode():
            crops = crops_like_pillow(tensors, owner, windows, self.size).div_(255.0)
            out = self.runner(crops)[self.runner.output_names[0]]
            probs = out.double().cpu().numpy()
        split = np.split(probs, np.cumsum([counts[i] for i in todo])[:-1])
        result = [np.zeros((0, probs.shape[1])) for _ in boxes]
        for i, p in zip(todo, split):
            result[i] = p
        return result

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()
