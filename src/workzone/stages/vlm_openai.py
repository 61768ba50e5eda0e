"""A vision-language model behind an OpenAI-compatible chat endpoint (vLLM, SGLang, LMDeploy).

The stage asks one yes/no question per image and reads P(yes) from the first answer token's
log-probabilities, so a single generated token gives a graded score::

    Y = sum(exp(logprob) for yes-variants in top_logprobs)     # "Yes", "yes", " yes", "YES", ...
    N = sum(exp(logprob) for no-variants)
    P(yes) = Y / (Y + N);   log_odds = log(Y) - log(N)

If only one side appears, the other is bounded by the smallest listed probability (the score is
then a conservative estimate); if neither does, the answer text decides with ``text_log_odds``.

Requests go through the client every remote stage shares (:mod:`workzone.stages._remote`: one
pooled ``httpx.AsyncClient``, a semaphore, tenacity retries and a circuit breaker).
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from workzone.stages._remote import OpenAIChatStage, OpenAIEndpointParams, collect_outputs
from workzone.types import EarlierReports, Evidence, Image, StageOutput, sigmoid

__all__ = ["VlmParams", "VlmStage", "yes_no_log_odds", "classify_answer_token", "downscale_to_pixels",
           "image_data_url"]

DEFAULT_QUESTION = (
    "Is there road work or a construction zone in this image, for example traffic cones, barriers, "
    "road-work signs, construction workers or construction machines? Answer yes or no."
)


class VlmParams(OpenAIEndpointParams):
    question: str = Field(default=DEFAULT_QUESTION, min_length=1)
    system_prompt: str | None = None
    max_pixels: int = Field(default=448 * 448, ge=32 * 32, le=16_000_000,
                            description="images are downscaled to at most this many pixels")
    jpeg_quality: int = Field(default=90, ge=30, le=100)
    top_logprobs: int = Field(default=20, ge=1, le=20)
    max_tokens: int = Field(default=1, ge=1, le=64, description="tokens to generate (the first is scored)")
    structured_choice: Literal["off", "structured_outputs", "guided_choice"] = Field(
        default="off", description="constrain the answer to yes/no (vLLM >= 0.12: structured_outputs)")
    text_log_odds: float = Field(default=2.0, ge=0, le=20, description="|log-odds| when only the text is usable")
    max_log_odds: float = Field(default=12.0, gt=0, le=50, description="scores are clipped to +-this")


class VlmStage(OpenAIChatStage):
    """Asks a served VLM whether the image shows road work; P(yes) from first-token logprobs."""

    kind = "vlm_openai"
    Params = VlmParams
    default_cost = 400.0
    images_per_prompt = 1
    tiny_params = {"base_url": "tiny:openai", "model": "fake-vlm", "retries": 0}
    params: VlmParams

    @classmethod
    def context_tokens(cls, params: VlmParams, px_per_token: int) -> int:
        """The image's visual tokens, the question and the answer."""
        return math.ceil(params.max_pixels / px_per_token ** 2) + 8 + 512 + params.max_tokens

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        self._loaded_chat().breaker.check()  # open circuit: fail at once, the cascade decides without us
        urls = await self.run_blocking(self._encode_all, list(batch))
        results = await asyncio.gather(*(self._ask(u) for u in urls), return_exceptions=True)
        return collect_outputs(results)

    def _encode_all(self, batch: list[Image]) -> list[str]:
        return [image_data_url(im.pixels, self.params.max_pixels, self.params.jpeg_quality) for im in batch]

    async def _ask(self, data_url: str) -> StageOutput:
        data = await self._loaded_chat().complete(self.request_body(data_url))
        return self.interpret(data)

    def request_body(self, data_url: str) -> dict[str, Any]:
        """The chat-completion request for one image (vLLM ``ChatCompletionRequest`` fields)."""
        p = self.params
        messages: list[dict[str, Any]] = []
        if p.system_prompt:
            messages.append({"role": "system", "content": p.system_prompt})
        messages.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": p.question},
        ]})
        body: dict[str, Any] = {"model": p.model, "messages": messages, "max_tokens": p.max_tokens,
                                "temperature": 0.0, "logprobs": True, "top_logprobs": p.top_logprobs}
        if p.structured_choice == "structured_outputs":
            body["structured_outputs"] = {"choice": ["yes", "no"]}
        elif p.structured_choice == "guided_choice":
            body["guided_choice"] = ["yes", "no"]
        body.update(p.extra_body)
        return body

    def interpret(self, data: Mapping[str, Any]) -> StageOutput:
        """Turn a chat-completion response into a score and a note."""
        p = self.params
        choice = data["choices"][0]
        text = str(choice["message"].get("content") or "").strip()
        positions = ((choice.get("logprobs") or {}).get("content")) or []
        for pos in positions:
            if not isinstance(pos, Mapping):
                continue
            top = list(pos.get("top_logprobs") or [])
            if not top and "token" in pos:
                top = [pos]
            z = yes_no_log_odds(top)
            if z is not None:
                z = max(-p.max_log_odds, min(p.max_log_odds, z))
                py = sigmoid(z)
                note = f"{p.model} answered {text[:40]!r}; P(yes)={py:.3f} from first-token logprobs"
                return StageOutput(z, Evidence(notes=(note,)))
        answer = classify_answer_token(text.split()[0] if text else "")
        if answer is None:
            return StageOutput(None, Evidence(notes=(f"{p.model} answered {text[:60]!r}: neither yes nor no; abstained",)))
        z = p.text_log_odds if answer == "yes" else -p.text_log_odds
        note = f"{p.model} answered {text[:40]!r}; no yes/no logprobs, scored from the text"
        return StageOutput(z, Evidence(notes=(note,)))


_STRIP = " \t\r\n.,:;!?\"'*`()[]{}<>_-\u2581\u0120"


def classify_answer_token(token: str) -> str | None:
    """``"yes"``, ``"no"`` or ``None`` for one answer token, ignoring case, spaces and punctuation.

    Byte-level BPE markers (``Ġ``, ``▁``) are stripped too, as some servers report raw tokens.

    Examples:
        >>> [classify_answer_token(t) for t in ["Yes", " yes", "YES.", "\u0120No", "Nope", "Y"]]
        ['yes', 'yes', 'yes', 'no', None, None]
    """
    word = token.strip(_STRIP).lower()
    return word if word in ("yes", "no") else None


def yes_no_log_odds(top: Sequence[Mapping[str, Any]]) -> float | None:
    """log P(yes-variants) - log P(no-variants) from one position's ``top_logprobs``.

    Args:
        top: entries with ``token`` and ``logprob`` (as in ``logprobs.content[i].top_logprobs``).

    Returns:
        The log-odds, or ``None`` when no yes- or no-variant is listed. When only one side is
        listed, the other side's mass is bounded by the smallest listed probability and by the
        unlisted mass, so the result understates the model's confidence rather than inventing it.

    Examples:
        >>> round(yes_no_log_odds([{"token": "Yes", "logprob": math.log(0.6)},
        ...                        {"token": " yes", "logprob": math.log(0.2)},
        ...                        {"token": "No", "logprob": math.log(0.2)}]), 4)
        1.3863
    """
    yes = no = listed = 0.0
    min_p = 1.0
    seen: set[str] = set()
    for e in top:
        tok, lp = e.get("token"), e.get("logprob")
        if not isinstance(tok, str) or not isinstance(lp, (int, float)) or tok in seen:
            continue
        seen.add(tok)
        p = math.exp(max(float(lp), -745.0))
        listed += p
        min_p = min(min_p, p)
        side = classify_answer_token(tok)
        if side == "yes":
            yes += p
        elif side == "no":
            no += p
    if yes <= 0.0 and no <= 0.0:
        return None
    bound = max(min(min_p, 1.0 - listed), 1e-12)
    return math.log(yes if yes > 0 else bound) - math.log(no if no > 0 else bound)


def downscale_to_pixels(pixels: np.ndarray, max_pixels: int) -> Any:
    """A PIL image of ``pixels`` (H, W, 3 uint8) downscaled, aspect kept, to at most ``max_pixels``."""
    from PIL import Image as PILImage

    img = PILImage.fromarray(pixels)
    w, h = img.size
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / float(w * h))
        img = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), PILImage.Resampling.BICUBIC)
    return img


def image_data_url(pixels: np.ndarray, max_pixels: int, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` of the image downscaled to ``max_pixels``."""
    buf = io.BytesIO()
    downscale_to_pixels(pixels, max_pixels).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


