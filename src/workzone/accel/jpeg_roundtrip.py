"""A JPEG save-and-load round trip as tensor operations, with libjpeg's arithmetic (Pillow's defaults).

Why not ``torchvision.io.encode_jpeg`` on the GPU: its nvJPEG encoder keeps full-resolution chroma
(4:4:4; Pillow saves 4:2:0), so its artefacts differ from those the detector was trained on, and
it encodes one image at a time with two stream synchronisations each. This module reproduces what
``PIL.Image.save(buf, "JPEG", quality=q)`` followed by ``PIL.Image.open(buf)`` does to the pixels,
batched, on any device:

- colour: libjpeg's fixed-point RGB -> YCbCr (``jccolor.c``) and back (``jdcolor.c``), in integers;
- chroma: 2 x 2 averaging with libjpeg's alternating 1, 2 bias (``jcsample.c``), edge replication to
  whole blocks as ``jcprepct.c`` does, and the "fancy" triangle upsampling on decode (``jdsample.c``);
- blocks: the 8 x 8 DCT, quantisation by the IJG tables scaled to ``quality`` (``jcparam.c``),
  rounding half away from zero (``jcdctmgr.c``), dequantisation and the inverse DCT.

The DCTs are libjpeg's integer "islow" transforms (``jfdctint.c``, ``jidctint.c``) in int32, with its
descaling between the passes; on the 469 dev images the detector's probabilities stay within the parity
test's bounds (``tests/accel/test_object_path.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["jpeg_roundtrip", "quant_tables"]

# IJG standard tables (ITU-T T.81 Annex K), natural order.
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32

_FIX = {name: int(v * 65536 + 0.5) for name, v in {
    "0.29900": 0.299, "0.58700": 0.587, "0.11400": 0.114, "0.16874": 0.16874, "0.33126": 0.33126,
    "0.50000": 0.5, "0.41869": 0.41869, "0.08131": 0.08131, "1.40200": 1.402, "1.77200": 1.772,
    "0.71414": 0.71414, "0.34414": 0.34414}.items()}
_ONE_HALF = 1 << 15
_CBCR_OFFSET = 128 << 16


def quant_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's luminance and chrominance tables for ``quality`` (baseline: clamped to 1..255).

    Examples:
        >>> int(quant_tables(72)[0][0, 0]), int(quant_tables(72)[1][7, 7])
        (9, 55)
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"quality: expected 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    out = []
    for base in (_LUMA, _CHROMA):
        t = (np.array(base, np.int64) * scale + 50) // 100
        out.append(np.clip(t, 1, 255).reshape(8, 8))
    return out[0], out[1]


def _pad_edge(torch: Any, x: Any, height: int, width: int) -> Any:
    """Replicate the last row and column of int [N, H, W] out to ``height`` x ``width``."""
    h, w = x.shape[-2:]
    if torch.compiler.is_compiling():
        # Under torch.compile (dynamic shapes) the ``if``s below, or a cat of an expanded edge, are guards on the
        # size, and every image size on the other side of one a recompile; a replicate pad (of float values: the
        # samples are 0..255, exact) guards on nothing. (The crops in jpeg_roundtrip still guard on whether they
        # are contiguous: a few size classes, a graph each.)
        pad = torch.nn.functional.pad(x.float(), (0, width - w, 0, height - h), mode="replicate")
        return pad.to(x.dtype)
    if w < width:
        x = torch.cat([x, x[..., :, -1:].expand(*x.shape[:-1], width - w)], dim=-1)
    if h < height:
        x = torch.cat([x, x[..., -1:, :].expand(*x.shape[:-2], height - h, x.shape[-1])], dim=-2)
    return x


# jfdctint.c / jidctint.c ("islow"): 13-bit fixed-point constants, 2 extra bits between the passes.
_CONST_BITS, _PASS1_BITS = 13, 2
_C = {"0_298631336": 2446, "0_390180644": 3196, "0_541196100": 4433, "0_765366865": 6270, "0_899976223": 7373,
      "1_175875602": 9633, "1_501321110": 12299, "1_847759065": 15137, "1_961570560": 16069,
      "2_053119869": 16819, "2_562915447": 20995, "3_072711026": 25172}


def _descale(x: Any, n: int) -> Any:
    return (x + (1 << (n - 1))) >> n


def _odd_part(t0: Any, t1: Any, t2: Any, t3: Any) -> tuple[Any, Any, Any, Any]:
    """The odd half of the LL&M butterfly, shared by both transforms (libjpeg's names)."""
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _C["1_175875602"]
    t0, t1, t2, t3 = t0 * _C["0_298631336"], t1 * _C["2_053119869"], t2 * _C["3_072711026"], t3 * _C["1_501321110"]
    z1, z2 = z1 * -_C["0_899976223"], z2 * -_C["2_562915447"]
    z3, z4 = z3 * -_C["1_961570560"] + z5, z4 * -_C["0_390180644"] + z5
    return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def _fdct_pass(torch: Any, d: list, first: bool) -> Any:
    """One pass of jfdctint.c jpeg_fdct_islow over the 8 samples ``d`` (tensors); returns the 8 outputs stacked."""
    t0, t7, t1, t6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
    t2, t5, t3, t4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS
    out = [None] * 8
    if first:
        out[0], out[4] = (t10 + t11) << _PASS1_BITS, (t10 - t11) << _PASS1_BITS
    else:
        out[0], out[4] = _descale(t10 + t11, _PASS1_BITS), _descale(t10 - t11, _PASS1_BITS)
    z1 = (t12 + t13) * _C["0_541196100"]
    out[2] = _descale(z1 + t13 * _C["0_765366865"], shift)
    out[6] = _descale(z1 + t12 * -_C["1_847759065"], shift)
    o7, o5, o3, o1 = _odd_part(t4, t5, t6, t7)
    out[7], out[5], out[3], out[1] = (_descale(v, shift) for v in (o7, o5, o3, o1))
    return torch.stack(out, dim=-1)


def _idct_pass(torch: Any, d: list, first: bool) -> Any:
    """One pass of jidctint.c jpeg_idct_islow (jpeg-6b, as libjpeg-turbo) over 8 dequantised inputs."""
    z1 = (d[2] + d[6]) * _C["0_541196100"]
    t2, t3 = z1 + d[6] * -_C["1_847759065"], z1 + d[2] * _C["0_765366865"]
    t0, t1 = (d[0] + d[4]) << _CONST_BITS, (d[0] - d[4]) << _CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_part(d[7], d[5], d[3], d[1])
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
    out = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
    return torch.stack([_descale(v, shift) for v in out], dim=-1)


def _blocks_roundtrip(torch: Any, planes: list[tuple[Any, np.ndarray]]) -> list[Any]:
    """Level shift, DCT, quantise, dequantise, inverse DCT of int [N, H, W] planes (H, W multiples of 8), each
    with its quantisation table.

    The blocks of every plane go through the transforms together, as one [blocks, 8, 8] tensor with a table per
    block: the transforms are some 300 elementwise operators whatever the block count, and each is a kernel
    launch on a GPU, so a plane apiece (luma, then each chroma plane) tripled a batch's fixed cost.
    """
    blocks, tables = [], []
    for plane, table in planes:
        n, h, w = plane.shape
        # [N, rows of blocks, columns of blocks, 8 (y), 8 (x)], flattened to blocks; int32 as in libjpeg
        b = (plane.to(torch.int32) - 128).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(-1, 8, 8)
        blocks.append(b)
        tables.append(torch.as_tensor(table, dtype=torch.int32, device=plane.device).expand(b.shape[0], 8, 8))
    b = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    q = torch.cat(tables) if len(tables) > 1 else tables[0]
    rows = _fdct_pass(torch, list(b.unbind(-1)), True)                                # along x
    coef = _fdct_pass(torch, list(rows.unbind(-2)), False).transpose(-1, -2)          # along y, then [.., v, u]
    # jcdctmgr.c quantize: the DCT is scaled by 8, so the divisor is 8 q; round half away from zero.
    div = 8 * q
    level = torch.div(coef.abs() + div // 2, div, rounding_mode="floor") * coef.sign()
    deq = level * q
    cols = _idct_pass(torch, list(deq.unbind(-2)), True)                              # along y: [.., x(col), y]
    pix = _idct_pass(torch, list(cols.unbind(-2)), False)                             # along x: [.., y, x]
    pix = (pix + 128).clamp_(0, 255).to(torch.int32)
    out = []
    for (plane, _), part in zip(planes, pix.split([x.shape[0] for x in blocks])):
        n, h, w = plane.shape
        out.append(part.reshape(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w))
    return out


def _fancy_upsample(torch: Any, c: Any) -> Any:
    """jdsample.c h2v2_fancy_upsample of int [N, h, w] -> [N, 2h, 2w] (edges replicated)."""
    above = torch.cat([c[:, :1], c[:, :-1]], dim=1)
    below = torch.cat([c[:, 1:], c[:, -1:]], dim=1)
    # Column sums for the upper and lower output row of each input row: 3 x nearer + further.
    rows = torch.stack([3 * c + above, 3 * c + below], dim=2).reshape(c.shape[0], 2 * c.shape[1], c.shape[2])
    left = torch.cat([rows[:, :, :1], rows[:, :, :-1]], dim=2)
    right = torch.cat([rows[:, :, 1:], rows[:, :, -1:]], dim=2)
    even = torch.div(3 * rows + left + 8, 16, rounding_mode="floor")
    odd = torch.div(3 * rows + right + 7, 16, rounding_mode="floor")
    return torch.stack([even, odd], dim=3).reshape(rows.shape[0], rows.shape[1], 2 * rows.shape[2])


def jpeg_roundtrip(x: "torch.Tensor", quality: int) -> "torch.Tensor":
    """The pixels a baseline 4:2:0 JPEG at ``quality`` decodes to, as Pillow saves and loads it.

    Args:
        x: [N, 3, H, W] RGB holding uint8 values (any int or float dtype), every image one size.
        quality: JPEG quality, 1..100.

    Returns:
        float32 [N, 3, H, W] of uint8 values, on ``x``'s device.

    Examples:
        >>> import torch
        >>> flat = torch.full((1, 3, 16, 16), 100.0)
        >>> jpeg_roundtrip(flat, 72).unique().tolist()  # a flat grey survives (DC only)
        [100.0]
    """
    import torch

    n, _c, h, w = x.shape
    rgb = x.to(torch.int32)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    f = _FIX
    # jccolor.c rgb_ycc_convert: Y rounds half up; Cb, Cr add 128 and round (ONE_HALF - 1).
    y = (f["0.29900"] * r + f["0.58700"] * g + f["0.11400"] * b + _ONE_HALF) >> 16
    cb = (-f["0.16874"] * r - f["0.33126"] * g + f["0.50000"] * b + _CBCR_OFFSET + _ONE_HALF - 1) >> 16
    cr = (f["0.50000"] * r - f["0.41869"] * g - f["0.08131"] * b + _CBCR_OFFSET + _ONE_HALF - 1) >> 16
    luma_t, chroma_t = quant_tables(quality)
    hb, wb = -(-h // 8) * 8, -(-w // 8) * 8
    # Chroma: the full-resolution rows padded to an even count and the columns to whole 16-pixel
    # MCUs (jcsample.c expand_right_edge), then 2 x 2 sums with the 1, 2, 1, 2 ... bias.
    hc2, wc2 = h + h % 2, -(-w // 16) * 16
    bias = torch.tensor([1, 2], dtype=torch.int32, device=x.device).repeat(wc2 // 4)
    hcb = -(-h // 16) * 8  # chroma block rows: the downsampled plane padded by its last row
    # Cb and Cr side by side as one batch of planes (every step is per image), and their blocks through the
    # transforms with the luma's, in one call (see _blocks_roundtrip).
    p = _pad_edge(torch, torch.cat([cb, cr]), hc2, wc2)
    s = p.reshape(2 * n, hc2 // 2, 2, wc2 // 2, 2).sum(dim=(2, 4))
    s = (s + bias) >> 2
    s = _pad_edge(torch, s, hcb, wc2 // 2)
    y_out, dec = _blocks_roundtrip(torch, [(_pad_edge(torch, y, hb, wb), luma_t), (s, chroma_t)])
    y_out = y_out[:, :h, :w]
    chroma = _fancy_upsample(torch, dec[:, :(h + 1) // 2, :(w + 1) // 2])[:, :h, :w]
    cb_o, cr_o = chroma[:n] - 128, chroma[n:] - 128
    # jdcolor.c ycc_rgb_convert with its fixed-point tables (arithmetic right shifts).
    r_o = y_out + ((f["1.40200"] * cr_o + _ONE_HALF) >> 16)
    g_o = y_out + ((-f["0.34414"] * cb_o + _ONE_HALF - f["0.71414"] * cr_o) >> 16)
    b_o = y_out + ((f["1.77200"] * cb_o + _ONE_HALF) >> 16)
    return torch.stack([r_o, g_o, b_o], dim=1).clamp_(0, 255).float()
