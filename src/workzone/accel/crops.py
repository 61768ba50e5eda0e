"""Candidate crops with Pillow's pixels, for a whole batch on the torch device.

The verifier (:mod:`workzone.stages.object_verifier`) was trained on crops cut by
:func:`workzone.verified_evidence.candidate_crops`: a square window around each box, zero beyond the image,
``PIL.Image.resize(BILINEAR)`` to the crop size (through the size the verifier was trained at first, for a
larger image). :func:`crop_windows` is that window arithmetic, shared by both paths, and
:func:`crops_like_pillow` makes the same pixels on the device: each resize is Pillow's separable filter
(:mod:`workzone.accel.resample`'s 8-bit fixed-point coefficients, horizontal pass, rounding to uint8 values,
vertical pass), with each crop's window folded into its matrices, so a batch of images and their candidates is
four batched matrix products and no per-crop Python.

Why matrices over the whole image row rather than ``roi_align``: ``roi_align`` averages evenly spaced bilinear
samples, which is not Pillow's triangle filter; a verifier reads fine detail (a tail light against a cone's
reflective band), and the CPU and GPU paths must answer alike (issue 23's parity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from workzone.accel.device_image import upload
from workzone.accel.resample import round_u8

if TYPE_CHECKING:
    import torch

__all__ = ["CropWindows", "crop_windows", "crops_like_pillow", "MIN_WINDOW"]

#: The smallest window a crop is cut from, in image pixels.
MIN_WINDOW = 12.0
_PRECISION = float(1 << 22)  # Pillow's 8-bit coefficients: 22 fractional bits (Resample.c PRECISION_BITS)
#: Largest float64 working set (bytes) of one chunk of same-sized images: bounds memory on big frames. More on a GPU:
#: each chunk is a few dozen kernel launches, and a 640-px batch of 1,024 in 1-GiB chunks was 29 of them.
_CHUNK_BYTES = {"cpu": 1 << 30, "cuda": 4 << 30}


@dataclass(frozen=True)
class CropWindows:
    """Where each crop comes from (all int64 numpy arrays of one length M).

    Attributes:
        left, top: the window's top-left corner in image pixels (may be negative: zero fill).
        side: the window's side in image pixels (its width and height).
        seen: the side the window is first resized to (the detail the verifier was trained at); ``side`` when the
            image needs no such step.
    """

    left: np.ndarray
    top: np.ndarray
    side: np.ndarray
    seen: np.ndarray


def crop_windows(boxes: np.ndarray, heights: np.ndarray, widths: np.ndarray, *, context: float,
                 min_side: float = MIN_WINDOW, max_side: int | None = None) -> CropWindows:
    """Each box's square window: centred on it, ``context`` times its longer side, at least ``min_side``.

    Args:
        boxes: (M, 4) x1, y1, x2, y2 in image pixels (float).
        heights, widths: (M,) the size of each box's image.
        context: window side over the box's longer side.
        min_side: smallest window side.
        max_side: the longest image side the verifier was trained at; a larger image's windows are first
            resized by ``max_side / longest side`` (``seen``). ``None``: never.

    Examples:
        >>> w = crop_windows(np.array([[20.0, 10, 30, 20]]), np.array([40]), np.array([60]), context=2.0)
        >>> int(w.left[0]), int(w.top[0]), int(w.side[0]), int(w.seen[0])
        (15, 5, 20, 20)
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = np.maximum(min_side, context * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    # np.round rounds half to even, as Python's round() in the Pillow path did.
    left = np.round(cx - side / 2).astype(np.int64)
    top = np.round(cy - side / 2).astype(np.int64)
    n = np.maximum(1, np.round(side)).astype(np.int64)
    longest = np.maximum(np.asarray(heights, np.float64), np.asarray(widths, np.float64)).reshape(-1)
    shrink = np.minimum(1.0, max_side / longest) if max_side else np.ones(len(b))
    seen = np.where(shrink < 1.0, np.maximum(1, np.round(n * shrink)), n).astype(np.int64)
    return CropWindows(left, top, n, seen)


def _taps(torch: Any, length: "torch.Tensor", out: "torch.Tensor", offset: "torch.Tensor", out_max: int,
          extent: int, taps: int) -> "torch.Tensor":
    """Pillow's bilinear coefficients resizing windows of ``length`` samples starting at ``offset`` to ``out``
    samples, placed in rows of ``extent`` samples: float64 [M, out_max, extent] (rows past ``out`` and samples
    outside ``0..extent`` are zero, which is the zero fill of a window beyond the image). ``taps``: at least the
    widest filter's samples (:func:`_tap_count`, from the host's numbers: asking the device would wait for it).

    The same arithmetic as :func:`workzone.accel.resample._weights` (``precompute_coeffs`` then
    ``normalize_coeffs_8bpc``), for every window at once: a crop's window is rarely the size of another's.
    """
    f64 = torch.float64
    dev = length.device
    length, out = length.to(f64), out.to(f64)
    scale = length / out
    filterscale = scale.clamp(min=1.0)
    support = filterscale  # bilinear: support 1
    xx = torch.arange(out_max, device=dev, dtype=f64)[None, :]
    center = (xx + 0.5) * scale[:, None]
    xmin = torch.trunc(center - support[:, None] + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support[:, None] + 0.5), length[:, None])
    pos = xmin[..., None] + torch.arange(taps, device=dev, dtype=f64)  # [M, out_max, taps] window samples
    k = (1.0 - ((pos - center[..., None] + 0.5) / filterscale[:, None, None]).abs()).clamp(min=0.0)
    k = torch.where((pos < xmax[..., None]) & (xx[..., None] < out[:, None, None]), k, torch.zeros((), dtype=f64,
                                                                                                  device=dev))
    total = k.sum(dim=2, keepdim=True)
    k = torch.where(total != 0, k / torch.where(total != 0, total, torch.ones((), dtype=f64, device=dev)), k)
    k = torch.trunc(k * _PRECISION + 0.5) / _PRECISION
    col = pos + offset.to(f64)[:, None, None]
    inside = (col >= 0) & (col < extent) & (k != 0)
    # Samples outside the row go to one spare column, dropped after.
    idx = torch.where(inside, col, torch.full((), float(extent), dtype=f64, device=dev)).long()
    mats = torch.zeros((len(length), out_max, extent + 1), dtype=f64, device=dev)
    mats.scatter_(2, idx, torch.where(inside, k, torch.zeros((), dtype=f64, device=dev)))
    return mats[..., :extent]


def _tap_count(length: np.ndarray, out: np.ndarray | int) -> int:
    """Samples of the widest bilinear filter resizing ``length`` to ``out`` (support ``max(length / out, 1)`` on each
    side of a centre, plus the two ends)."""
    if not len(length):
        return 1
    return int(np.ceil(2 * max(1.0, float(np.max(np.asarray(length, np.float64) / out))))) + 2


def _resize_windows(torch: Any, x: "torch.Tensor", owner: "torch.Tensor", slot: "torch.Tensor", slots: int,
                    rows: "torch.Tensor", cols: "torch.Tensor") -> "torch.Tensor":
    """Pillow's two passes over ``x`` [n, 3, H, W] (float64 of uint8 values) for M windows: window ``i`` of image
    ``owner[i]`` is its ``slot[i]``-th (of at most ``slots``); ``cols`` [M, O, W] horizontally (rounded), then
    ``rows`` [M, O, H] vertically (rounded): [M, 3, O, O]."""
    n, c, h, w = x.shape
    m, o = cols.shape[0], cols.shape[1]
    # Horizontal: every window of an image in one product with its rows (no per-window copy of the image).
    per_image = torch.zeros((n, slots, o, w), dtype=x.dtype, device=x.device)
    per_image[owner, slot] = cols
    mid = round_u8(torch.bmm(x.reshape(n, c * h, w), per_image.reshape(n, slots * o, w).transpose(1, 2)))
    mid = mid.reshape(n, c, h, slots, o)[owner, :, :, slot]  # [M, 3, H, O]
    mid = mid.permute(0, 2, 1, 3).reshape(m, h, c * o)  # [M, H, 3*O]
    res = round_u8(torch.bmm(rows, mid))  # [M, O, 3*O]
    return res.reshape(m, o, c, o).permute(0, 2, 1, 3)


def crops_like_pillow(images: Sequence["torch.Tensor"], owner: np.ndarray, windows: CropWindows,
                      size: int) -> "torch.Tensor":
    """The crops :func:`workzone.verified_evidence.candidate_crops` cuts, on the images' device.

    Args:
        images: per image a [3, H, W] uint8 tensor, all on one device (any sizes).
        owner: (M,) the image of each window.
        windows: :func:`crop_windows` of the M boxes (with their images' sizes).
        size: the crops' side.

    Returns:
        float32 [M, 3, size, size] of uint8 values (0..255), in ``owner``'s order.
    """
    import torch

    owner = np.asarray(owner, np.int64).reshape(-1)
    m = len(owner)
    device = images[0].device if len(images) else torch.device("cpu")
    result = torch.zeros((m, 3, size, size), dtype=torch.float32, device=device)
    if not m:
        return result
    groups: dict[tuple[int, int], list[int]] = {}
    for i in np.unique(owner).tolist():
        groups.setdefault((int(images[i].shape[1]), int(images[i].shape[2])), []).append(i)
    for (h, w), idx in groups.items():
        budget = _CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"]
        per = max(1, budget // (3 * h * w * 8 * 3))  # the image, its windows' product, the rounding
        for j in range(0, len(idx), per):
            part = idx[j:j + per]
            sel = np.flatnonzero(np.isin(owner, part))
            local = np.searchsorted(np.asarray(part), owner[sel])
            x = torch.stack([images[i] for i in part]).double()
            result[_upload(torch, sel, device)] = _crops_of(torch, x, local, windows, sel, size, h, w).float()
    return result


def _crops_of(torch: Any, x: "torch.Tensor", local: np.ndarray, windows: CropWindows, sel: np.ndarray, size: int,
              h: int, w: int) -> "torch.Tensor":
    """The crops of the windows ``sel`` (of images ``local`` in ``x``, all H x W): float64 [m, 3, size, size]."""
    dev = x.device
    side = _upload(torch, windows.side[sel], dev)
    seen = windows.seen[sel]
    owner = _upload(torch, local, dev)
    slot_np = _slots(local)
    slot, slots = _upload(torch, slot_np, dev), int(slot_np.max()) + 1
    left, top = _upload(torch, windows.left[sel], dev), _upload(torch, windows.top[sel], dev)
    sides = windows.side[sel]
    if np.all(seen == sides):  # no shrink first: window -> size in one resize
        target = torch.full_like(side, size)
        taps = _tap_count(sides, size)
        return _resize_windows(torch, x, owner, slot, slots, _taps(torch, side, target, top, size, h, taps),
                               _taps(torch, side, target, left, size, w, taps))
    # Through the trained-at detail first: window -> seen (its own resize, rounded), then seen -> size.
    s = int(seen.max())
    seen_t = _upload(torch, seen, dev)
    taps = _tap_count(sides / seen, 1)
    first = _resize_windows(torch, x, owner, slot, slots, _taps(torch, side, seen_t, top, s, h, taps),
                            _taps(torch, side, seen_t, left, s, w, taps))
    zero = torch.zeros_like(seen_t)
    target = torch.full_like(seen_t, size)
    # Where seen equals size Pillow's resize copies; the identity coefficients give the same pixels.
    second = _taps(torch, seen_t, target, zero, size, s, _tap_count(seen, size))
    each = torch.arange(len(sel), device=dev)
    return _resize_windows(torch, first, each, torch.zeros_like(each), 1, second, second)


def _slots(owner: np.ndarray) -> np.ndarray:
    """Each window's index among its image's windows (0, 1, ... in order)."""
    order = np.argsort(owner, kind="stable")
    sorted_owner = owner[order]
    starts = np.searchsorted(sorted_owner, sorted_owner, side="left")
    slot = np.empty(len(owner), np.int64)
    slot[order] = np.arange(len(owner)) - starts
    return slot


def _upload(torch: Any, a: np.ndarray, device: Any) -> "torch.Tensor":
    return upload(torch.from_numpy(np.ascontiguousarray(a)), device)
