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

    def probabilities(self, images: Sequence[Image], boxes: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """The (M, C) float64 probabilities of the (M, 4) boxes x1, y1, x2, y2 (image pixels), ``counts[i]`` of them
        in ``images[i]``, in order."""
        import torch

        counts = np.asarray(counts, np.int64).reshape(-1)
        tensors = [image_tensor(im, self.runner.device) for im in images]
        owner = np.repeat(np.arange(len(images)), counts)
        heights = np.array([int(t.shape[1]) for t in tensors], np.int64)[owner]
        widths = np.array([int(t.shape[2]) for t in tensors], np.int64)[owner]
        windows = crop_windows(np.asarray(boxes, np.float64).reshape(-1, 4), heights, widths, context=self.context,
                               max_side=self.max_side)
        with torch.inference_mode():
            crops = crops_like_pillow(tensors, owner, windows, self.size).div_(255.0)
            return self.runner(crops)[self.runner.output_names[0]].double().cpu().numpy()

    def close(self) -> None:
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()
