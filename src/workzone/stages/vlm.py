"""A vision-language model behind an OpenAI-compatible chat endpoint (vLLM, SGLang, LMDeploy).

The stage asks one yes/no question per image and reads P(yes) from the first answer token's
log-probabilities, so a single generated token gives a graded score::

    Y = sum(exp(logprob) for yes-variants in top_logprobs)     # "Yes", "yes", " yes", "YES", ...
    N = sum(exp(logprob) for no-variants)
    P(yes) = Y / (Y + N);   log_odds = log(Y) - log(N)

If only one side appears, the other is bounded by the smallest listed probability (the score is
then a conservative estimate); if neither does, the answer text decides with ``text_log_odds``.

Requests go through one pooled ``httpx.AsyncClient``, a semaphore (``max_concurrency``), tenacity
retries and a circuit breaker (:mod:`workzone.resilience`). Errors are translated here, at the
boundary: timeouts become :class:`DeadlineExceeded`; refused connections, 5xx/429 and malformed
bodies become :class:`BackendUnavailable`; other 4xx answers become :class:`StageError`.

:class:`OpenAIChat` is the client shared with :mod:`workzone.stages.reasoner`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import BackendUnavailable, ConfigError, DeadlineExceeded, StageError
from workzone.resilience import CircuitBreaker, Resilience, ResilienceParams
from workzone.stages.base import Stage
from workzone.stages.registry import register_stage
from workzone.types import Evidence, Image, StageOutput

if TYPE_CHECKING:
    import httpx

__all__ = ["OpenAIEndpointParams", "VlmParams", "VlmStage", "OpenAIChat", "OpenAIChatStage", "yes_no_log_odds",
           "classify_answer_token", "downscale_to_pixels", "image_data_url", "collect_outputs"]

DEFAULT_QUESTION = (
    "Is there road work or a construction zone in this image, for example traffic cones, barriers, "
    "road-work signs, construction workers or construction machines? Answer yes or no."
)


class OpenAIEndpointParams(ResilienceParams):
    """Where and how to reach an OpenAI-compatible server (shared by the VLM and the reasoner)."""

    base_url: str = Field(pattern=r"^https?://", description="e.g. http://localhost:8000/v1")
    model: str = Field(min_length=1, description="the served model id, e.g. Qwen/Qwen3-VL-8B-Instruct")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="NAME of the environment variable holding the API key")
    # Not `timeout_s`: that key of a stage entry is the cascade's limit for the whole batch.
    request_timeout_s: float = Field(default=30.0, gt=0, le=600, description="per-request HTTP timeout")
    max_concurrency: int = Field(default=8, ge=1, le=1024, description="requests in flight at once")
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="merged into each request (e.g. chat_template_kwargs)")


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


class OpenAIChat:
    """A pooled, resilient ``POST {base_url}/chat/completions`` client for one stage.

    Args:
        name: the stage name (for errors and the breaker).
        params: endpoint, timeout, concurrency, retry and breaker settings.
        client: an injected ``httpx.AsyncClient`` (not closed here); one is created when ``None``.
    """

    def __init__(self, name: str, params: OpenAIEndpointParams, client: "httpx.AsyncClient | None" = None) -> None:
        self.name = name
        self.params = params
        self.resilience = Resilience(name, params)
        self.url = params.base_url.rstrip("/") + "/chat/completions"
        self._httpx = require("httpx", "vlm", "OpenAI-compatible endpoints")
        headers = {}
        if params.api_key_env:
            key = os.environ.get(params.api_key_env)
            if not key:
                raise ConfigError(f"stage {name!r}: api_key_env names {params.api_key_env!r}, which is not set; "
                                  "export it or remove api_key_env")
            headers["Authorization"] = f"Bearer {key}"
        # Sent per request, so an injected shared client works the same as our own.
        self._headers = headers or None
        self._owns_client = client is None
        n = params.max_concurrency
        self._client = client or self._httpx.AsyncClient(
            timeout=self._httpx.Timeout(params.request_timeout_s),
            limits=self._httpx.Limits(max_connections=n, max_keepalive_connections=n))
        self._sem = asyncio.Semaphore(n)

    @property
    def breaker(self) -> CircuitBreaker:
        return self.resilience.breaker

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one chat completion with retries, through the breaker and the semaphore.

        Returns:
            The response body; ``choices[0].message`` is known to exist.
        """
        self.breaker.check()  # fail fast rather than queue behind the semaphore
        async with self._sem:
            return await self.resilience.call(self._post_once, body)

    async def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        httpx = self._httpx
        try:
            resp = await self._client.post(self.url, json=body, headers=self._headers,
                                           timeout=self._httpx.Timeout(self.params.request_timeout_s))
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(self.name, f"{self.url} did not answer within {self.params.request_timeout_s} s "
                                   "(request_timeout_s); the server is overloaded or the model too slow") from exc
        except httpx.TransportError as exc:  # refused, reset, protocol errors: the backend is not there
            raise BackendUnavailable(self.name, f"cannot reach {self.url}: {type(exc).__name__}: {exc}; "
                                     "is the server running?") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise BackendUnavailable(self.name, f"{self.url} answered HTTP {resp.status_code}: {_error_text(resp)}")
        if resp.status_code >= 400:
            hint = " (check api_key_env)" if resp.status_code in (401, 403) else " (check model and params)"
            raise StageError(self.name, f"{self.url} refused the request: HTTP {resp.status_code}: "
                             f"{_error_text(resp)}{hint}")
        try:
            data = resp.json()
            message = data["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError("message is not an object")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendUnavailable(self.name, f"malformed response from {self.url}: {type(exc).__name__}: "
                                     f"{exc}; body starts {resp.text[:120]!r}") from exc
        return data

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class OpenAIChatStage(Stage):
    """Base of the stages that call an OpenAI-compatible endpoint through :class:`OpenAIChat`.

    Holds the client (``self.chat``, created by :meth:`load` on the injected ``http_client`` when
    the host gives one), exposes its breaker, reports the endpoint in :meth:`describe` and closes
    the client in :meth:`aclose`. Subclasses implement ``predict`` and call :meth:`_loaded_chat`.
    """

    params: OpenAIEndpointParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat: OpenAIChat | None = None

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker (``state``, ``failures``, ``opened_at``), once loaded."""
        return None if self.chat is None else self.chat.breaker

    async def load(self) -> None:
        # No request here: a backend that is down at start-up must not stop the cascade from
        # starting; the breaker handles it at predict time.
        self.chat = OpenAIChat(self.name, self.params, self.context.extras.get("http_client"))

    def _loaded_chat(self) -> OpenAIChat:
        """The client, or :class:`StageError` when :meth:`load` has not run."""
        if self.chat is None:
            raise StageError(self.name, "predict() called before load()")
        return self.chat

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["endpoint"] = self.params.base_url
        d["breaker"] = None if self.breaker is None else self.breaker.snapshot()
        return d

    async def aclose(self) -> None:
        if self.chat is not None:
            await self.chat.aclose()
            self.chat = None


@register_stage("vlm_openai")
class VlmStage(OpenAIChatStage):
    """Asks a served VLM whether the image shows road work; P(yes) from first-token logprobs."""

    Params = VlmParams
    default_cost = 400.0
    params: VlmParams

    async def predict(self, batch: Sequence[Image]) -> list[StageOutput]:
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
                py = 1.0 / (1.0 + math.exp(-z))
                note = f"{p.model} answered {text[:40]!r}; P(yes)={py:.3f} from first-token logprobs"
                return StageOutput(z, Evidence(notes=(note,)))
        answer = classify_answer_token(text.split()[0] if text else "")
        if answer is None:
            return StageOutput(None, Evidence(notes=(f"{p.model} answered {text[:60]!r}: neither yes nor no; abstained",)))
        z = p.text_log_odds if answer == "yes" else -p.text_log_odds
        note = f"{p.model} answered {text[:40]!r}; no yes/no logprobs, scored from the text"
        return StageOutput(z, Evidence(notes=(note,)))


def collect_outputs(results: list[Any]) -> list[StageOutput]:
    """Per-image results -> outputs; if every image failed, raise the first error for the cascade.

    A partial failure (one image's request died after its retries) abstains for that image only,
    with the error in a note, so one bad request does not throw away the batch's other answers.
    """
    errors = [r for r in results if isinstance(r, BaseException)]
    for e in errors:
        if not isinstance(e, Exception):  # cancellation and friends are not ours to swallow
            raise e
    if errors and len(errors) == len(results):
        raise errors[0]
    return [StageOutput(None, Evidence(notes=(f"request failed: {r}",))) if isinstance(r, BaseException) else r
            for r in results]


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


def _error_text(resp: Any) -> str:
    """The server's error message (vLLM: ``{"error": {"message": ...}}`` or ``{"message": ...}``)."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:300]
    return resp.text[:200]
