"""Memory and CPU bombs: refused from the header (4xx over HTTP) before any pixel is decoded, and
the decoder's peak memory for each stays far below 1 GB (measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workzone.errors import InvalidImageError
from workzone.io.budget import count_jpeg_scans, decode_bytes_estimate
from workzone.io.images import decode_image

ROOT = Path(__file__).resolve().parents[2]

REFUSED = {
    "png16_8944": "decode budget",
    "float_tiff_8944": "decode budget|MiB",
    "rgb_png_8944": "decode budget",
    "progressive_1000_scans": "1010 scans",
    "progressive_100_scans": "110 scans",
    "png_header_30000": "identify|pixels",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bomb_is_refused_with_a_reason(bomb_inputs, name):
    with pytest.raises(InvalidImageError, match=REFUSED[name]):
        decode_image(bomb_inputs[name])


def test_many_frame_gif_decodes_its_first_frame_only(bomb_inputs):
    assert decode_image(bomb_inputs["gif_2000_frames"]).pixels.shape == (32, 32, 3)


def test_jpeg_scans_are_counted_past_an_embedded_thumbnail(bomb_inputs):
    from tests.reliability.corpus import load_seeds

    assert count_jpeg_scans(load_seeds()["baseline.jpg"]) == 1
    assert count_jpeg_scans(load_seeds()["progressive.jpg"]) > 1
    assert count_jpeg_scans(load_seeds()["rotated_exif.jpg"]) == 1
    assert count_jpeg_scans(bomb_inputs["progressive_1000_scans"]) == 1010


@pytest.mark.parametrize("mode, size, more_than", [
    ("I;16", (8944, 8944), 380 * 2**20),   # 16-bit: the samples, their array and the 8-bit result
    ("F", (8944, 8944), 600 * 2**20),
    ("RGB", (4000, 3000), 0),
])
def test_decode_estimate_counts_bit_depth_and_mode(mode, size, more_than):
    est = decode_bytes_estimate(mode, size, 4096)
    assert est > more_than
    # RGB at 4000x3000 (not downscaled): the image and an upright copy, or the image and its array
    assert est >= 4 * size[0] * size[1] or mode == "RGB" and est == 8 * 12_000_000 + 8 * 2**20


_PEAK = """
import json, resource, sys
from workzone.io.images import decode_image
from workzone.errors import InvalidImageError
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data); outcome = "decoded"
except InvalidImageError:
    outcome = "refused"
print(json.dumps({"outcome": outcome, "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


@pytest.mark.parametrize("name", ["png16_8944", "float_tiff_8944", "progressive_1000_scans"])
def test_bomb_peak_memory_is_small(bomb_inputs, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bomb_inputs[name])
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src")}, check=True)
    result = json.loads(out.stdout)
    assert result["outcome"] == "refused" and result["peak_mb"] < 100, result
