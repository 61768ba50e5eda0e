"""Decode budgets read from the header: memory per image and work per progressive JPEG.

Pillow reads an image's size and mode without decoding it. From them, and for a JPEG from its
marker segments, these functions say what the decode will cost before any pixel is decoded, so a
155 KB 16-bit PNG that would need 2 GB, or a 100 KB JPEG with 1,000 progressive scans that would
take a minute, is refused in microseconds.

Costs (measured on 2 CPU cores, libjpeg-turbo through Pillow 12): a progressive JPEG costs about
1.5 ms per scan per megapixel whatever its byte size, because every scan walks every block;
reduced-size DCT (``draft``) does not shorten that walk.
"""

from __future__ import annotations

import math
import re

__all__ = ["count_jpeg_scans", "decode_bytes_estimate", "HIGH_BIT_MODES"]

#: Modes with more than 8 bits per sample; decoded through a chunked 8-bit conversion.
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# Bytes per pixel of Pillow's storage; every other mode is stored in 4 bytes per pixel.
_STORED_BPP = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

# Modes the decoder can downscale before converting (the rest are converted at full size first).
_RESIZED_IN_PLACE = frozenset({"L", "LA", "RGB", "RGBA"})

# A marker after entropy-coded data: 0xFF (plus fill bytes) then a byte that is neither a stuffed
# zero nor a restart marker (RST0-7 sit inside a scan).
_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")
_SOS, _EOI, _SOI = 0xDA, 0xD9, 0xD8
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def count_jpeg_scans(raw: bytes) -> int:
    """Number of scans (SOS segments) in the first JPEG image of ``raw``.

    Walks the marker segments by their lengths and skips entropy-coded data to the next marker,
    so markers inside an embedded EXIF thumbnail are not counted. A file that ends early or is
    malformed returns the scans seen so far (the decoder reports the damage).

    Examples:
        >>> count_jpeg_scans(b"\\xff\\xd8\\xff\\xda\\x00\\x02\\x00\\xff\\xda\\x00\\x02\\xff\\xd9")
        2
    """
    if raw[:2] != b"\xff\xd8":
        return 0
    pos, scans, n = 2, 0, len(raw)
    while pos + 1 < n:
        if raw[pos] != 0xFF:
            m = _NEXT_MARKER.search(raw, pos)
            if m is None:
                break
            pos = m.start()
            continue
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE or marker == _SOI:
            pos += 2
            continue
        if pos + 4 > n:
            break
        end = pos + 2 + int.from_bytes(raw[pos + 2:pos + 4], "big")
        if marker == _SOS:
            scans += 1
            m = _NEXT_MARKER.search(raw, end)
            if m is None:
                break
            end = m.start()
        pos = max(end, pos + 2)
    return scans


def decode_bytes_estimate(mode: str, size: tuple[int, int], max_side: int) -> int:
    """Peak bytes the decoder needs for an image of ``mode`` and ``size`` (as Pillow reports them).

    The decoder keeps the decoded image (its stored size), converts 16-bit and float samples to 8
    bits in a copy (plus the 8-bit result), converts modes it cannot resize (palette, CMYK, LAB,
    ...) to RGB at full size, and holds the downscaled result.

    Examples:
        >>> decode_bytes_estimate("RGB", (1000, 1000), 4096)
        8000000
        >>> decode_bytes_estimate("I;16", (8944, 8944), 4096) > 400_000_000
        True
    """
    w, h = size
    n = w * h
    stored = _STORED_BPP.get(mode, 4) * n
    if mode in HIGH_BIT_MODES:
        work = stored + n  # the samples as an array, and the 8-bit result
    elif mode in _RESIZED_IN_PLACE:
        work = 0
    else:
        work = 4 * n
    scale = 1.0 if not max_side or max(w, h) <= max_side else max_side / max(w, h)
    out = 4 * math.ceil(w * scale) * math.ceil(h * scale)
    return stored + work + out
