"""The work-zone object decision on a torch device, from decoded pixels to log-odds, batched.

What the onnxruntime path does image by image with Pillow and numpy, done here for a whole batch
on the device (CUDA, or the CPU where CI runs it):

1. the image as the detector was trained on it (its sidecar's ``source_max_side``,
   ``source_jpeg_quality``): Pillow's Lanczos shrink (:mod:`workzone.accel.resample`) and a JPEG
   round trip (:mod:`workzone.accel.jpeg_roundtrip`), one call per distinct image size;
2. the letterbox to the detector's input (Pillow's bilinear), the detector;
3. box decoding: the top ``max_detections`` peaks of the heat map above ``floor``, mapped back to
   image pixels exactly as :func:`workzone.stages.roadwork_detector.decode_detections` and the
   letterbox inverse do;
4. the sidecar's decision (:class:`workzone.object_evidence.ObjectDecision`, handed in by the stage, as
   accel imports nothing above io) over the same features as
   :func:`workzone.object_evidence.object_features`, as tensor reductions;

Only the log-odds and the kept boxes (N x ``max_detections`` x 6 floats) are copied back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from workzone.accel.device_image import image_tensor, upload
from workzone.accel.jpeg_roundtrip import jpeg_roundtrip
from workzone.accel.resample import (letterbox_geometry, letterbox_like_pillow, letterbox_matrices, resample_matrix,
                                     resample_with, resize_like_pillow)
from workzone.types import Image

if TYPE_CHECKING:
    import torch

    from workzone.accel.runner import TorchModelRunner

__all__ = ["ObjectBatch", "LinearDecision", "DeviceObjectDetector", "treat_for_detector"]


class LinearDecision(Protocol):
    """What the device path reads of a fitted decision (``workzone.object_evidence.ObjectDecision``):
    ``log_odds = bias + weights . features[columns]`` over that module's feature layout."""

    bias: float
    weights: np.ndarray
    columns: np.ndarray
    num_classes: int
    lookalikes: tuple[int, ...]  # classes left out of the class-blind summaries (``sign_other``)


@dataclass
class ObjectBatch:
    """One batch's detections and decision, on the device.

    Attributes:
        boxes: float32 [N, D, 6] rows ``x1, y1, x2, y2, score, class`` in each image's pixels, by
            falling score; rows past ``counts[i]`` are padding (score below the floor).
        counts: int64 [N] kept boxes per image.
        log_odds: float64 [N] the decision's log-odds, or ``None`` without a decision block.
        images: the decoded full-resolution [3, H, W] uint8 tensors.
        parts: float64 [N, F] each decision feature's weight x value (the "decided by" evidence), or ``None``.
    """

    boxes: "torch.Tensor"
    counts: "torch.Tensor"
    log_odds: "torch.Tensor | None"
    images: list
    parts: "torch.Tensor | None" = None

    def to_host(self) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray | None]:
        """Per image (D_i, 6) float32 numpy detections, the log-odds and the decision parts as float64
        numpy (one copy each)."""
        boxes = self.boxes.float().cpu().numpy()
        counts = self.counts.cpu().numpy()
        dets = [boxes[i, : int(counts[i])] for i in range(len(counts))]
        z = self.log_odds.double().cpu().numpy() if self.log_odds is not None else None
        parts = self.parts.double().cpu().numpy() if self.parts is not None else None
        return dets, z, parts


class DeviceObjectDetector:
    """The detector's pre-processing, network, box decoding and decision on the runner's device.

    Args:
        runner: the detector graph as a torch module.
        size: the detector's square input side.
        stride: output stride of the heat map.
        num_classes: K.
        source_max_side: shrink images larger than this first (``None``: keep them).
        source_jpeg_quality: then pass them through JPEG at this quality (``None``: don't).
        decision: the sidecar's decision, or ``None`` (then :attr:`ObjectBatch.log_odds` is ``None``).
        count_at: the score from which a box counts (the decision's features' threshold).
        logit_clip: the bound of the features' clipped logits.
        chunk: most images pre-processed at once (bounds the float32 working memory).
        compile_treatment: run the as-trained treatment and the letterbox as one ``torch.compile``'d function
            (:func:`treat_for_detector`, dynamic shapes: a graph per size class (odd sides, multiples of 8 or 16:
            a handful), not per image or batch size). Off by default: on one H100 (torch 2.11) inductor spent 29 s
            and then failed to compile it with dynamic shapes, and the treatment is a quarter of a 224-px batch
            against the network's half (benchmarks/results/gpu_stage_profile.md); on the CPU it compiles, with
            the eager path's pixels exactly (integer values, exact sums). Eager if compiling fails, recorded in
            :attr:`notes` (and the runner's).
        treatment_dynamic: compile the treatment with dynamic shapes (one graph per size class); ``False`` compiles
            one graph per input shape, batch size included (for a fixed-shape batch: a benchmark, a camera feed). On
            the H100 the static compile failed with the same inductor error as the dynamic one
            (benchmarks/results/gpu_stage_profile_static.md).

    Attributes:
        notes: what became of the compiled treatment, if it was asked for.
    """

    def __init__(self, runner: "TorchModelRunner", *, size: int, stride: int, num_classes: int,
                 source_max_side: int | None, source_jpeg_quality: int | None,
                 decision: LinearDecision | None, count_at: float = 0.3, logit_clip: float = 6.0,
                 chunk: int = 512,
                 compile_treatment: bool = False, treatment_dynamic: bool = True) -> None:
        self.runner = runner
        self.size = size
        self.stride = stride
        self.num_classes = num_classes
        self.source_max_side = source_max_side
        self.source_jpeg_quality = source_jpeg_quality
        self.decision = decision
        self.count_at = count_at
        self.logit_clip = logit_clip
        self.chunk = chunk
        self.compile_treatment = compile_treatment
        self.treatment_dynamic = treatment_dynamic
        self._compiled: Any = None  # the compiled treat_for_detector, made on first use
        # treat_for_detector's matrices per image size, kept on the device: a serving process sees the same few
        # camera sizes again and again, and each upload would wait for the device's queue.
        self._matrices: dict[tuple[int, int], tuple[Any, Any, Any, Any]] = {}
        self.notes: list[str] = []

    @property
    def device(self) -> str:
        return self.runner.device

    def as_trained(self, x: "torch.Tensor") -> "torch.Tensor":
        """[n, 3, H, W] uint8 values of one size -> the images as the training copies were made (float32)."""
        h, w = int(x.shape[2]), int(x.shape[3])
        x = x.float()
        side = self.source_max_side
        if side is not None and max(h, w) > side:
            s = side / max(h, w)
            # Python's round (half to even), as the training copies and the onnxruntime path use.
            x = resize_like_pillow(x, max(1, round(h * s)), max(1, round(w * s)), "lanczos")
        if self.source_jpeg_quality is not None:
            x = jpeg_roundtrip(x, self.source_jpeg_quality)
        return x

    def treated(self, x: "torch.Tensor") -> "torch.Tensor":
        """[n, 3, H, W] uint8 values of one size -> float32 [n, 3, S, S] pixel values (0..255): the image as
        trained, letterboxed; compiled when :attr:`compile_treatment` is on."""
        if self.compile_treatment:
            import torch

            h, w = int(x.shape[2]), int(x.shape[3])
            mats = self._matrices.get((h, w))
            if mats is None:
                if len(self._matrices) >= 64:  # bound the cache (odd sizes from a file upload, say)
                    self._matrices.clear()
                mats = self._matrices[(h, w)] = _treatment_matrices(h, w, self.source_max_side, self.size,
                                                                    str(x.device))
            try:
                if self._compiled is None:
                    from workzone.accel.runner import allow_recompiles

                    # Each distinct shrink / letterbox case (a few; static: each shape) is a graph of this function.
                    allow_recompiles(torch)
                    self._compiled = torch.compile(treat_for_detector, dynamic=self.treatment_dynamic)
                graphs = _graphs_compiled()
                out = self._compiled(x, *mats, self.source_jpeg_quality)
                if _graphs_compiled() != graphs:
                    # A new size class compiled inside this batch (seconds): a first run, which a server charges
                    # to no client (TorchModelRunner.cold_runs).
                    self.runner.cold_runs += 1
                return out
            except Exception as exc:  # noqa: BLE001 - compiling happens on the first call; eager is always right
                note = f"compiled treatment failed ({type(exc).__name__}: {str(exc)[:200]}); eager"
                self.notes.append(note)
                self.runner.notes.append(note)
                self.compile_treatment, self._compiled = False, None
        return letterbox_like_pillow(self.as_trained(x), self.size)

    def inputs(self, tensors: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """Detector inputs [N, 3, S, S] in [0, 1] (the runner's dtype) for [3, H, W] uint8 tensors."""
        import torch

        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((int(t.shape[1]), int(t.shape[2])), []).append(i)
        out = None
        for idx in groups.values():
            for j in range(0, len(idx), self.chunk):
                part = idx[j:j + self.chunk]
                x = self.treated(torch.stack([tensors[i] for i in part])).div_(255.0)
                if len(part) == len(tensors):  # the whole batch in one piece (one size, one chunk): no copy
                    return x.to(self.runner.dtype)
                if out is None:
                    out = torch.empty((len(tensors), 3, self.size, self.size), dtype=self.runner.dtype,
                                      device=self.device)
                if part[-1] - part[0] == len(part) - 1:  # consecutive images: a slice, no index upload
                    out[part[0]:part[-1] + 1] = x
                else:
                    out.index_copy_(0, upload(torch.tensor(part), self.device), x.to(out.dtype))
        assert out is not None, "inputs() of an empty batch"
        return out

    def detect(self, images: Sequence[Image], *, floor: float, max_detections: int) -> ObjectBatch:
        """Detections (and the decision) for a batch of images, all on the device.

        Args:
            images: decoded images (pixels already on the device stay there).
            floor: lowest peak probability kept.
            max_detections: most boxes per image.
        """
        import torch

        with torch.inference_mode():
            tensors = [image_tensor(im, self.device) for im in images]
            raw = self.runner(self.inputs(tensors))[self.runner.output_names[0]].float()
            sizes = np.array([(im.width, im.height) for im in images], dtype=np.int64).reshape(-1, 2)
            boxes, counts = self._decode(raw, sizes, floor, max_detections)
            batch = ObjectBatch(boxes, counts, None, tensors)
            if self.decision is not None:
                heights = upload(torch.from_numpy(sizes[:, 1].astype(np.float64)), self.device)
                batch.log_odds, batch.parts = self._decide(boxes, counts, heights)
        return batch

    def _decode(self, raw: "torch.Tensor", sizes: np.ndarray, floor: float, most: int
                ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Boxes [N, D, 6] in image pixels and kept counts [N] from the raw output, ``sizes`` [N, 2] (width, height)."""
        import torch

        n, k = raw.shape[0], self.num_classes
        gh, gw = int(raw.shape[2]), int(raw.shape[3])
        heat = raw[:, :k].reshape(n, -1)
        top = min(most, heat.shape[1])
        scores, idx = heat.topk(top, dim=1, sorted=True)
        cls = torch.div(idx, gh * gw, rounding_mode="floor")
        cell = idx - cls * (gh * gw)
        gy = torch.div(cell, gw, rounding_mode="floor")
        gx = cell - gy * gw
        geo = raw[:, k:k + 4].reshape(n, 4, -1)
        dx, dy, bw, bh = (geo[:, j].gather(1, cell) for j in range(4))
        cx, cy = (gx + dx) * self.stride, (gy + dy) * self.stride
        # The letterbox inverse of roadwork_detector._to_image_coords, from each image's own size.
        # Per distinct size, not per image (a batch of 1,024 camera frames has a handful); float64 then float32, as
        # torch.tensor made it of Python floats.
        distinct, which = np.unique(sizes, axis=0, return_inverse=True)
        geom = np.empty((len(distinct), 6), np.float64)
        for r, (w, h) in enumerate(distinct.tolist()):
            nw, nh, padx, pady = letterbox_geometry(w, h, self.size)
            geom[r] = (padx, pady, w / nw, h / nh, w, h)
        g = upload(torch.from_numpy(geom[which.reshape(-1)]).float(), raw.device)
        padx, pady, sx, sy, w, h = (g[:, j:j + 1] for j in range(6))
        x1 = torch.minimum(((cx - bw / 2) - padx).mul(sx).clamp(min=0), w)
        x2 = torch.minimum(((cx + bw / 2) - padx).mul(sx).clamp(min=0), w)
        y1 = torch.minimum(((cy - bh / 2) - pady).mul(sy).clamp(min=0), h)
        y2 = torch.minimum(((cy + bh / 2) - pady).mul(sy).clamp(min=0), h)
        boxes = torch.stack([x1, y1, x2, y2, scores, cls.float()], dim=2)
        counts = (scores >= floor).sum(dim=1)
        return boxes, counts

    def _decide(self, boxes: "torch.Tensor", counts: "torch.Tensor", heights: "torch.Tensor"
                ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """The decision's log-odds [N] and its parts [N, F] (weight x feature) from kept boxes:
        object_features as reductions over [N, D]."""
        import torch

        d = self.decision
        assert d is not None
        b = boxes.double()
        valid = torch.arange(b.shape[1], device=b.device)[None, :] < counts[:, None]
        score = torch.where(valid, b[..., 4], torch.zeros_like(b[..., 4]))
        cls = b[..., 5].long()
        strong = valid & (score >= self.count_at)

        def logit(p: "torch.Tensor") -> "torch.Tensor":
            p = p.clamp(1e-3, 1 - 1e-3)
            return torch.log(p / (1 - p)).clamp(-self.logit_clip, self.logit_clip)

        # Per class, its best score and its count of strong boxes, every class at once ([N, D, K]): a loop over the
        # classes cost some ten operators per class per batch (kernel launches on a GPU, whatever the batch size).
        n, k = b.shape[0], d.num_classes
        is_c = cls[..., None] == torch.arange(k, device=b.device)
        best = torch.where(valid[..., None] & is_c, score[..., None], torch.zeros((), dtype=score.dtype,
                                                                                    device=b.device)).amax(dim=1)
        many = torch.log1p((strong[..., None] & is_c).sum(dim=1).double())
        per_class = torch.stack([logit(best), many], dim=2).reshape(n, 2 * k)  # class 0's two, class 1's two ...
        # A look-alike class (a traffic sign that is not the road-work sign) is never evidence: the class-blind
        # summaries leave it out, as object_features does.
        evidence = valid.clone()
        for c in getattr(d, "lookalikes", ()):
            evidence &= cls != c
        ev_score = torch.where(evidence, score, torch.zeros_like(score))
        ev_strong = strong & evidence
        tall = torch.where(ev_strong, b[..., 3] - b[..., 1], torch.zeros_like(score)).amax(dim=1)
        blind = torch.stack([logit(ev_score.amax(dim=1)), torch.log1p(ev_strong.sum(dim=1).double()),
                             tall / heights.clamp(min=1e-9)], dim=1)
        feats = torch.cat([per_class, blind], dim=1)
        w = torch.as_tensor(d.weights, dtype=torch.float64, device=b.device)
        parts = feats[:, torch.as_tensor(d.columns, device=b.device)] * w
        return d.bias + parts.sum(dim=1), parts


def treat_for_detector(x: "torch.Tensor", shrink_rows: "torch.Tensor | None", shrink_cols: "torch.Tensor | None",
                       box_rows: "torch.Tensor | None", box_cols: "torch.Tensor | None",
                       quality: int | None) -> "torch.Tensor":
    """:meth:`DeviceObjectDetector.as_trained` then :func:`letterbox_like_pillow`, with every size-dependent number
    in the matrices handed in (:func:`_treatment_matrices`), so that ``torch.compile(dynamic=True)`` traces one
    graph for every image size instead of specialising on each.

    Args:
        x: [n, 3, H, W] uint8 values, one size.
        shrink_rows, shrink_cols: the Lanczos shrink's float64 matrices, ``None`` for an axis kept.
        box_rows, box_cols: the letterbox's (:func:`~workzone.accel.resample.letterbox_matrices`).
        quality: the JPEG round trip's quality, ``None`` for none.

    Returns:
        float32 [n, 3, S, S] of uint8 values.
    """
    x = x.float()
    if shrink_rows is not None or shrink_cols is not None:
        x = resample_with(x, shrink_rows, shrink_cols)
    if quality is not None:
        x = jpeg_roundtrip(x, quality)
    return resample_with(x, box_rows, box_cols)


def _treatment_matrices(h: int, w: int, side: int | None, size: int, device: str) -> tuple[Any, Any, Any, Any]:
    """The four matrices of :func:`treat_for_detector` for H x W images, on ``device``."""
    import torch

    sr = sc = None
    if side is not None and max(h, w) > side:
        s = side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))  # as DeviceObjectDetector.as_trained
        f64 = torch.float64
        sr = resample_matrix(h, nh, "lanczos", device=device, dtype=f64) if nh != h else None
        sc = resample_matrix(w, nw, "lanczos", device=device, dtype=f64) if nw != w else None
        h, w = nh, nw
    br, bc = letterbox_matrices(h, w, size, device=device)
    return sr, sc, br, bc


def _graphs_compiled() -> int:
    """The graphs dynamo has compiled in this process so far (any function's; a change means one compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
