"""EncodedImage: a JPEG waiting for its batch's device decode still behaves as an Image."""

from __future__ import annotations

import numpy as np

from tests.conftest import encode, solid
from workzone.accel.device_image import EncodedImage
from workzone.io.images import decode_image


def test_encoded_image_has_the_header_size_and_decodes_on_demand():
    data = encode(solid((200, 40, 10), (48, 40)))
    img = EncodedImage(data, "upload", (48, 40))
    assert (img.width, img.height) == (48, 40) and img.source == "upload"
    assert np.array_equal(img.pixels, decode_image(data).pixels)
    assert img.pixels is img.pixels  # decoded once
