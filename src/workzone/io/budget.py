"""Decode budgets read from the header: memory per image, work per progressive JPEG, expected decode
seconds, and the size of TIFF IFD / EXIF metadata.

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

__all__ = ["count_jpeg_scans", "decode_bytes_estimate", "decode_seconds_estimate", "metadata_cost", "output_bytes",
           "HIGH_BIT_MODES"]

#: Modes with more than 8 bits per sample; decoded through a chunked 8-bit conversion.
HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

# Bytes per pixel of Pillow's storage; every other mode is stored in 4 bytes per pixel.
_STORED_BPP = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

# Modes the decoder can downscale before converting (the rest are converted at full size first).
_RESIZED_IN_PLACE = frozenset({"L", "LA", "RGB", "RGBA"})

# Modes with transparency, flattened onto white (the caller names a palette with a transparent entry PA).
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})

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


def decode_bytes_estimate(mode: str, size: tuple[int, int], max_side: int, fmt: str = "") -> int:
    """Peak bytes the decoder needs for an image of ``mode`` and ``size`` (as Pillow reports them, after
    a JPEG's reduced-DCT draft) and format ``fmt``: the most it holds at once, in the order
    :func:`workzone.io.images.decode_image` works (each step frees what the one before held).

    1. Decoding: the stored image (Pillow keeps RGB in 4 bytes a pixel), 16-bit and float samples
       converted to 8 bits in a copy, and modes the decoder cannot resize (palette, CMYK, ...)
       converted to RGB at full size. An opaque still WebP is decoded by OpenCV straight into a 3-byte
       array (libwebp's own buffers on top: 6 bytes a pixel at most); any other WebP by Pillow's
       animation decoder, which keeps two canvases and hands over a copy (16 bytes a pixel).
    2. Downscaling to ``max_side``: the full image, Pillow's one-direction intermediate and the result.
    3. The image turned upright (a copy), or its transparency flattened onto white (its RGBA copy,
       the white canvas, the blend and its RGB conversion), beside the image as decoded (or the
       downscaled one); then the 3-byte array.

    OpenCV's own libraries are not counted: a process loads them with its first large WebP (25 MB,
    once; the decoder processes' memory cap leaves room for them).

    Measured against real decodes in ``tests/reliability/test_memory.py`` (the estimate is never
    below the process's peak, and not far above it).

    Examples:
        >>> decode_bytes_estimate("RGB", (1000, 1000), 4096) // 2**20
        15
        >>> decode_bytes_estimate("I;16", (8944, 8944), 4096) > 400_000_000
        True
        >>> decode_bytes_estimate("RGB", (4896, 4896), 4096, "WEBP") // 2**20
        239
    """
    w, h = size
    n = w * h
    scale = 1.0 if not max_side or max(w, h) <= max_side else max_side / max(w, h)
    ow, oh = (w, h) if scale == 1.0 else (math.ceil(w * scale), math.ceil(h * scale))
    resized = (ow, oh) != (w, h)
    grey = mode in ("L", "1") or mode in HIGH_BIT_MODES  # kept (or made) one byte a pixel
    px = 1 if grey else 4  # Pillow's bytes a pixel of the image that is downscaled
    if fmt == "WEBP" and mode == "RGB":
        decoding = 7 * n  # OpenCV's array (libwebp's buffers on top), or beside it Pillow's copy
        image = 4 * n
    elif fmt == "WEBP":
        decoding = 16 * n
        image = 12 * n  # the decoder's two canvases live as long as the image
    else:
        stored = _STORED_BPP.get(mode, 4) * n
        if mode in HIGH_BIT_MODES:
            work = stored + n  # the samples as an array, and the 8-bit result
        elif mode in _RESIZED_IN_PLACE or grey:
            work = 0
        else:
            work = 4 * n
        decoding = stored + work
        image = px * n
    alpha = mode in _ALPHA_MODES
    if resized:  # the full image, its downscaling intermediate and the result; then the small one's copies
        downscaling = image + px * (max(ow * h, w * oh) + ow * oh)
        finishing = (20 if alpha else 8) * ow * oh
    else:  # the copies are made beside the image as decoded
        downscaling = 0
        finishing = image + 16 * n if alpha else max(image + 4 * n, 8 * n)
    return max(decoding, downscaling, finishing) + _SLACK


_SLACK = 8 * 2**20  # the decoder's own buffers (a JPEG's DCT rows, zlib windows, a row of the array copy)


# CPU seconds per decoded megapixel, decode + conversion + downscale, measured with Pillow 13 on the
# 2-core test machine (4000x3000 drawings and noise; the slower of the two, rounded up).
_SECONDS_PER_MP = {"PNG": 0.030, "WEBP": 0.032, "TIFF": 0.020, "GIF": 0.015, "BMP": 0.010, "JPEG": 0.010,
                   "MPO": 0.010}
_SECONDS_PER_SCAN_MP = 0.0015  # a progressive JPEG's every scan walks every block (see the module doc)


def decode_seconds_estimate(fmt: str, size: tuple[int, int], scans: int = 1) -> float:
    """CPU seconds decoding an image of format ``fmt`` at ``size`` (the decode size, after a JPEG's
    reduced-DCT draft) is expected to take; ``scans``: a JPEG's scan count. Used to keep costly
    images off the decoders that cheap ones use.

    Examples:
        >>> round(decode_seconds_estimate("WEBP", (4896, 4896)), 2)
        0.77
        >>> decode_seconds_estimate("JPEG", (1920, 1080)) < 0.03
        True
    """
    mp = size[0] * size[1] / 1e6
    est = mp * _SECONDS_PER_MP.get(fmt, 0.032)
    if fmt in ("JPEG", "MPO"):
        est += max(0, scans - 1) * mp * _SECONDS_PER_SCAN_MP
    return est


def output_bytes(size: tuple[int, int], max_side: int) -> int:
    """Bytes of the 8-bit RGB array an image of ``size`` becomes once downscaled to ``max_side``
    (what a caller holds after decoding; reserved from the header, before decoding).

    Examples:
        >>> output_bytes((8000, 4000), 4096)
        25165824
    """
    w, h = size
    scale = 1.0 if not max_side or max(w, h) <= max_side else max_side / max(w, h)
    return 3 * max(1, round(w * scale)) * max(1, round(h * scale))


# -- metadata (TIFF IFD / EXIF) guard ---------------------------------------------------------------
# Bytes per value of each TIFF field type (1 BYTE ... 13 IFD, 16-18 BigTIFF 8-byte types).
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                   16: 8, 17: 8, 18: 8}
# Types Pillow keeps as one bytes object; the others become a tuple of Python numbers.
_BYTE_TYPES = frozenset({1, 2, 6, 7})
# Tags whose value is the offset of another IFD: Exif, GPS, Interoperability, SubIFDs.
_SUB_IFD_TAGS = frozenset({0x8769, 0x8825, 0xA005, 0x014A})


def metadata_cost(raw: bytes, max_entries: int, max_value_bytes: int) -> str | None:
    """Why the TIFF structures in ``raw`` (a TIFF file's IFDs, a JPEG's EXIF and MPF blocks, the EXIF
    chunk of a WebP or PNG) are too large to parse, or ``None`` when they are within budget.

    Pillow parses every IFD entry into Python objects, and follows EXIF pointers in pure Python: a
    few KB of IFD entries that all point at the same large block cost gigabytes and seconds (issue
    20). This walk reads only the entry headers (12 bytes each), never the values, and stops at the
    first limit passed, so it costs microseconds whatever the input.

    Args:
        raw: the encoded image.
        max_entries: most IFD entries summed over every IFD (chained and nested) of every block.
        max_value_bytes: most memory the values the entries declare would take once parsed, summed
            (a byte of a string or blob counts 1, a number 32: Pillow makes a Python object of it).

    Examples:
        >>> tiff = b"II*\\x00\\x08\\x00\\x00\\x00" + b"\\x01\\x00" + b"\\x00\\x01\\x04\\x00\\x01\\x00\\x00\\x00\\x10\\x00\\x00\\x00" + b"\\x00" * 4
        >>> metadata_cost(tiff, 100, 1000) is None
        True
        >>> metadata_cost(tiff, 0, 1000)
        'its metadata (TIFF IFDs, EXIF) holds more than 0 entries'
    """
    budget = [max_entries, max_value_bytes]
    for block in _tiff_blocks(raw):
        over = _walk_tiff(block, budget)
        if over == "entries":
            return f"its metadata (TIFF IFDs, EXIF) holds more than {max_entries} entries"
        if over == "bytes":
            return f"its metadata (TIFF IFDs, EXIF) declares values that would take over {max_value_bytes // 2**20} MiB"
    return None


def _tiff_blocks(raw: bytes) -> list[memoryview]:
    view = memoryview(raw)
    if raw[:4] in (b"II*\x00", b"MM\x00*"):
        return [view]
    blocks: list[memoryview] = []
    if raw[:2] == b"\xff\xd8":  # JPEG: APP1 Exif and APP2 MPF segments, before the first scan
        pos, n = 2, len(raw)
        while pos + 4 <= n and raw[pos] == 0xFF:
            marker = raw[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            if marker == _SOS or marker == _EOI:
                break
            if marker in _STANDALONE or marker == _SOI:
                pos += 2
                continue
            length = int.from_bytes(raw[pos + 2:pos + 4], "big")
            body = view[pos + 4:pos + 2 + length]
            if marker == 0xE1 and bytes(body[:6]) == b"Exif\x00\x00":
                blocks.append(body[6:])
            elif marker == 0xE2 and bytes(body[:4]) == b"MPF\x00":
                blocks.append(body[4:])
            pos += 2 + max(length, 2)
    elif raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(raw):
            size = int.from_bytes(raw[pos + 4:pos + 8], "little")
            if raw[pos:pos + 4] == b"EXIF":
                body = view[pos + 8:pos + 8 + size]
                blocks.append(body[6:] if bytes(body[:6]) == b"Exif\x00\x00" else body)
            pos += 8 + size + (size & 1)
    elif raw[:8] == b"\x89PNG\r\n\x1a\n":
        at = raw.find(b"eXIf")
        if at >= 12:
            size = int.from_bytes(raw[at - 4:at], "big")
            blocks.append(view[at + 4:at + 4 + size])
    return blocks


def _walk_tiff(block: memoryview, budget: list[int]) -> str | None:
    """Walk the IFD chain and the sub-IFDs it points to, spending ``budget`` (entries, value bytes)
    in place; returns which limit was passed, or ``None``."""
    order = bytes(block[:2])
    if order not in (b"II", b"MM") or len(block) < 8:
        return None  # not a TIFF structure: the decoder will say what is wrong with it
    endian = "little" if order == b"II" else "big"
    u16 = lambda at: int.from_bytes(block[at:at + 2], endian)  # noqa: E731
    u32 = lambda at: int.from_bytes(block[at:at + 4], endian)  # noqa: E731
    if u16(2) == 43:  # BigTIFF: not parsed here; Pillow reads its first IFD only
        return None
    todo, seen = [u32(4)], set()
    while todo:
        offset = todo.pop()
        if offset in seen or offset == 0 or offset + 2 > len(block):
            continue
        seen.add(offset)
        entries = u16(offset)
        budget[0] -= entries + 1  # an IFD counts as an entry: a chain of empty IFDs is not free
        if budget[0] < 0:
            return "entries"
        for k in range(entries):
            at = offset + 2 + 12 * k
            if at + 12 > len(block):
                break
            tag, kind, count = u16(at), u16(at + 2), u32(at + 4)
            size = _TIFF_TYPE_SIZE.get(kind, 1) * count
            if size > 4:  # values stored elsewhere, parsed into Python objects (numbers: ~32 bytes each)
                budget[1] -= count if kind in _BYTE_TYPES else 32 * count
                if budget[1] < 0:
                    return "bytes"
            if tag in _SUB_IFD_TAGS and kind in (4, 13) and count >= 1:
                if count == 1:
                    todo.append(u32(at + 8))
                else:  # an array of offsets (SubIFDs): at most 64 followed
                    base = u32(at + 8)
                    todo.extend(u32(base + 4 * j) for j in range(min(count, 64)) if base + 4 * j + 4 <= len(block))
        nxt = offset + 2 + 12 * entries
        if nxt + 4 <= len(block):
            todo.append(u32(nxt))
    return None
