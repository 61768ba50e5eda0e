"""The SN72 synapses, field for field as natix-network-org/streetvision-subnet defines them
(``natix/protocol.py``), needs the ``miner`` extra.

Bittensor routes a request by the synapse's class name (``POST /ImageSynapse``), and current
validators send ``ExtendedImageSynapse`` (``prepare_image_synapse`` builds one), so the miner serves
both. Upstream types ``prediction`` as a plain ``float`` with default -1.0; the miner always fills
it with a finite value in [0, 1] after a successful decode.
"""

from __future__ import annotations

import pydantic

from workzone._optional import require

bt = require("bittensor", "miner", "the SN72 miner")

__all__ = ["ImageSynapse", "ExtendedImageSynapse", "SYNAPSES"]


class ImageSynapse(bt.Synapse):
    """A validator's image challenge and the miner's answer.

    Attributes:
        testnet_label: the true label on testnet (-1 on mainnet); never used to answer.
        image: the challenge image, base64-encoded JPEG.
        prediction: P(road work); > 0.5 is road work. -1.0 until the miner answers.
    """

    testnet_label: int = -1  # for easier miner eval on testnet (upstream comment)

    image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)

    prediction: float = pydantic.Field(
        title="Prediction",
        description="Probability that the image contains road work; > 0.5 counts as road work",
        default=-1.0,
        frozen=False,
    )

    def deserialize(self) -> float:
        """What ``dendrite.query(..., deserialize=True)`` returns: the prediction."""
        return self.prediction


class ExtendedImageSynapse(ImageSynapse):
    """The synapse current validators send: adds the model URL and a textual explanation."""

    model_url: str = ""
    explanation: str = pydantic.Field(
        title="Explanation",
        description="Textual explanation of visual indicators for roadwork detection. Required if prediction > 0.5.",
        default="",
        frozen=False,
    )


#: Every synapse class the miner attaches a handler for.
SYNAPSES: tuple[type[ImageSynapse], ...] = (ImageSynapse, ExtendedImageSynapse)
