"""Pillow's resampling as two matrix products, so a batch is resized on the device with Pillow's pixels.

The detector was trained on copies shrunk with ``PIL.Image.resize(..., LANCZOS)`` and sees its
inputs letterboxed with ``BILINEAR``; the onnxruntime path calls Pillow itself. To give the torch
path (CPU or CUDA) the same pixels, :func:`resample_matrix` builds Pillow's separable filter
weights (``Resample.c``: ``precompute_coeffs``, then the 8-bit fixed-point coefficients of
``normalize_coeffs_8bpc``), and :func:`resize_like_pillow` applies them horizontally, rounds to
uint8 values as Pillow does between its two passes, then vertically. The matrices are dense (a
640 -> 320 Lanczos row has 13 taps of 640), which on a GPU is still one fast matmul per pass.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Filter", "resample_matrix", "resize_like_pillow", "resample_with", "letterbox_like_pillow",
           "letterbox_geometry", "letterbox_matrices", "round_u8"]

Filter = Literal["bilinear", "lanczos"]

# Pillow's 8-bit coefficients are fixed point with this many fractional bits (Resample.c PRECISION_BITS).
_PRECISION_BITS = 32 - 8 - 2


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


_FILTERS = {"bilinear": (_bilinear, 1.0), "lanczos": (_lanczos, 3.0)}


@lru_cache(maxsize=256)
def _weights(in_size: int, out_size: int, kind: str) -> np.ndarray:
    fn, support = _FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    out = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        # C casts truncate towards zero; Pillow clamps afterwards.
        xmin = max(0, int(center - support + 0.5))
        xmax = min(in_size, int(center + support + 0.5))
        k = np.array([fn((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)])
        total = k.sum()
        if total != 0.0:
            k = k / total
        # normalize_coeffs_8bpc: round half away from zero to PRECISION_BITS.
        fixed = np.where(k < 0, np.trunc(k * (1 << _PRECISION_BITS) - 0.5), np.trunc(k * (1 << _PRECISION_BITS) + 0.5))
        out[xx, xmin:xmax] = fixed / (1 << _PRECISION_BITS)
    out.setflags(write=False)
    return out


def resample_matrix(in_size: int, out_size: int, kind: Filter, *, device: Any = "cpu", dtype: Any = None) -> "torch.Tensor":
    """Pillow's weights for resizing one axis from ``in_size`` to ``out_size`` samples.

    Returns:
        float tensor (out_size, in_size): row ``i`` holds output sample ``i``'s weights.

    Examples:
        >>> m = resample_matrix(4, 2, "bilinear")
        >>> m.sum(dim=1).tolist()
        [1.0, 1.0]
    """
    import torch

    return torch.tensor(_weights(int(in_size), int(out_size), kind), dtype=dtype or torch.float32, device=device)


def round_u8(x: "torch.Tensor") -> "torch.Tensor":
    """Float sums rounded to uint8 values as Pillow's 8-bit resampling does: half an LSB added and floored (its shift),
    clipped to 0..255. In place."""
    return x.add_(0.5).floor_().clamp_(0.0, 255.0)


def resize_like_pillow(x: "torch.Tensor", height: int, width: int, kind: Filter) -> "torch.Tensor":
    """Resize a batch as ``PIL.Image.resize((width, height), kind)`` does, to within float rounding.

    Args:
        x: float [N, C, H, W] holding uint8 values (0..255).
        height, width: the output size.
        kind: ``lanczos`` or ``bilinear``.

    Returns:
        float32 [N, C, height, width] of uint8 values (``x`` itself when the size is unchanged).

    Examples:
        >>> import torch
        >>> resize_like_pillow(torch.full((1, 3, 8, 8), 7.0), 4, 4, "lanczos").unique().tolist()
        [7.0]
    """
    import torch

    n, c, h, w = x.shape
    if (h, w) == (height, width):
        return x
    # Only the axes that change.
    f64 = torch.float64
    return resample_with(x, resample_matrix(h, height, kind, device=x.device, dtype=f64) if h != height else None,
                         resample_matrix(w, width, kind, device=x.device, dtype=f64) if w != width else None)


def resample_with(x: "torch.Tensor", rows: "torch.Tensor | None", cols: "torch.Tensor | None") -> "torch.Tensor":
    """Apply float64 resampling matrices as Pillow does: horizontally first, rounded to uint8 values, then vertically.

    Args:
        x: float [N, C, H, W] holding uint8 values.
        rows: (height, H) weights, or ``None`` to keep the rows.
        cols: (width, W) weights, or ``None`` to keep the columns.

    Returns:
        float32 [N, C, height, width] of uint8 values. Every sum is exact (see below), so any summation order
        (a compiled graph's, another BLAS's) gives the same pixels.
    """
    import torch

    # float64: a uint8 value times a 22-bit coefficient needs 30 bits, more than float32 holds exactly,
    # and the rounding to uint8 must see the exact sums (float32 put 2 % of the samples one level off).
    x = x.double()
    if cols is not None:
        x = round_u8(torch.matmul(x, cols.T))
    if rows is not None:
        x = round_u8(torch.matmul(rows, x))
    return x.float()


def letterbox_matrices(height: int, width: int, size: int, *, device: Any = "cpu"
                       ) -> tuple["torch.Tensor | None", "torch.Tensor | None"]:
    """:func:`letterbox_like_pillow` as two float64 matrices for :func:`resample_with`: (size, height) and (size,
    width), Pillow's bilinear weights placed at the letterbox's offset, zero rows where it pads (a zero row sums to
    the fill, 0); ``None`` for an axis that neither resizes nor pads.

    Examples:
        >>> rows, cols = letterbox_matrices(2, 4, 4)
        >>> rows.sum(dim=1).tolist(), cols is None
        ([0.0, 1.0, 1.0, 0.0], True)
    """
    import torch

    nw, nh, left, top = letterbox_geometry(width, height, size)
    out = []
    for n_in, n_new, start in ((height, nh, top), (width, nw, left)):
        if n_in == n_new == size:
            out.append(None)
            continue
        m = torch.zeros((size, n_in), dtype=torch.float64)
        m[start:start + n_new] = (torch.eye(n_in, dtype=torch.float64) if n_in == n_new
                                  else resample_matrix(n_in, n_new, "bilinear", dtype=torch.float64))
        out.append(m.to(device))
    return out[0], out[1]


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where :func:`workzone.io.images.resize_for_model` puts an image in its letterbox.

    Returns:
        ``(new_width, new_height, left, top)``.

    Examples:
        >>> letterbox_geometry(640, 360, 384)
        (384, 216, 0, 84)
    """
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def letterbox_like_pillow(x: "torch.Tensor", size: int, *, pad_value: float = 0.0) -> "torch.Tensor":
    """The batch letterboxed into ``size`` x ``size`` as ``resize_for_model(..., "letterbox")`` does.

    Args:
        x: float [N, C, H, W] of uint8 values, every image the same size.
        size: the square side.
        pad_value: fill, 0..255.

    Returns:
        float32 [N, C, size, size] of uint8 values (not yet divided by 255).
    """
    import torch

    n, c, h, w = x.shape
    nw, nh, left, top = letterbox_geometry(w, h, size)
    inner = resize_like_pillow(x, nh, nw, "bilinear")
    if (nh, nw) == (size, size):
        return inner.float()
    out = torch.full((n, c, size, size), float(pad_value), dtype=torch.float32, device=x.device)
    out[:, :, top:top + nh, left:left + nw] = inner
    return out
