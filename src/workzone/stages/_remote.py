"""What every remote stage shares: an OpenAI-compatible chat client, retries, a circuit breaker.

:class:`OpenAIChatStage` is the base of ``vlm_openai`` and ``reasoner_openai``: it owns one
:class:`OpenAIChat` (a pooled ``POST {base_url}/chat/completions`` client behind a semaphore,
tenacity retries and a :class:`CircuitBreaker`). Errors are translated here, at the boundary:
timeouts become :class:`DeadlineExceeded`; refused connections, 5xx/429 and malformed bodies
become :class:`BackendUnavailable`; other 4xx answers become :class:`StageError`.

A remote stage (a VLM behind an OpenAI-compatible server) can be slow, flaky or down. Retries
absorb a transient failure; the circuit breaker stops a dead backend from costing every request
its full timeout. One :class:`Resilience` belongs to one stage instance: nothing here is global.

States of the breaker::

    closed ──(failure_threshold consecutive failures, timeouts and cancellations included,
              or timeout_threshold consecutive timeouts)──> open
    open ──(cooldown_s elapsed, next call)──> half-open   (one trial call at a time)
    half-open ──success──> closed      half-open ──failure──> open (cool-down starts again)

State changes happen without an ``await`` in between, so they are atomic on one event loop; the
half-open trial slot makes concurrent callers fail fast instead of all probing a sick backend.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, TypeVar

from pydantic import Field

from workzone._optional import require
from workzone.errors import BackendUnavailable, ConfigError, DeadlineExceeded, StageError
from workzone.stages.base import Stage, StageParams
from workzone.types import Evidence, StageOutput

if TYPE_CHECKING:
    import httpx

__all__ = ["BreakerState", "CircuitBreaker", "ResilienceParams", "Resilience", "retry_async",
           "OpenAIEndpointParams", "OpenAIChat", "OpenAIChatStage", "collect_outputs"]

T = TypeVar("T")

log = logging.getLogger("workzone.stages")


class BreakerState(str, enum.Enum):
    """Where a circuit breaker stands (the value is what metrics export)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Fails fast once a backend has failed ``failure_threshold`` times in a row.

    Args:
        name: the stage name, used in the :class:`BackendUnavailable` raised while open.
        failure_threshold: consecutive failed calls that open the circuit.
        cooldown_s: how long the circuit stays open before one trial call is let through.
        counted: exception types that count as a backend failure; others (a bad request) pass
            through without touching the state. A cancelled call (the caller's deadline ran out
            while the backend said nothing) always counts.
        timeout_threshold: consecutive timeouts (a ``timeouts`` exception, or a cancellation) that
            open the circuit even below ``failure_threshold``: a frozen backend costs every call its
            whole timeout, so it gets fewer tries than one that fails fast. ``None``: no such rule.
        timeouts: exception types that are timeouts.
        clock: monotonic clock in seconds (injectable so tests need not sleep).

    Attributes:
        opened_at: clock value when the circuit last opened, or ``None`` while it never has.

    Examples:
        >>> b = CircuitBreaker("vlm", failure_threshold=2, cooldown_s=10, clock=lambda: 0.0)
        >>> b.state.value
        'closed'
    """

    def __init__(self, name: str, *, failure_threshold: int = 5, cooldown_s: float = 30.0,
                 counted: tuple[type[BaseException], ...] = (Exception,),
                 timeout_threshold: int | None = None, timeouts: tuple[type[BaseException], ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold: expected >= 1, got {failure_threshold}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s: expected >= 0, got {cooldown_s}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.counted = counted
        self.timeout_threshold = timeout_threshold
        self.timeouts = timeouts
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._timeouts = 0
        self._trial_in_flight = False
        self.opened_at: float | None = None
        #: How many calls were refused while open (for metrics).
        self.rejected = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open circuit whose cool-down has passed reads as half-open."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state for ``describe()`` and metrics."""
        return {"state": self.state.value, "failures": self._failures, "opened_at": self.opened_at,
                "rejected": self.rejected, "failure_threshold": self.failure_threshold,
                "timeout_threshold": self.timeout_threshold, "cooldown_s": self.cooldown_s}

    def check(self) -> None:
        """Raise :class:`BackendUnavailable` if a call would be refused now (takes no trial slot)."""
        state = self.state
        if state is BreakerState.OPEN or (state is BreakerState.HALF_OPEN and self._trial_in_flight):
            self.rejected += 1
            raise BackendUnavailable(self.name, self._open_message())

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker.

        Raises:
            BackendUnavailable: the circuit is open (or half-open with its trial call in flight);
                ``fn`` is not called.
        """
        self.check()
        trial = self.state is BreakerState.HALF_OPEN
        if trial:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = True
        try:
            result = await fn(*args, **kwargs)
        except self.counted as exc:
            self.record_failure(timeout=isinstance(exc, self.timeouts))
            raise
        except asyncio.CancelledError:
            # A call cancelled by the caller's deadline is a backend that did not answer in time: a
            # frozen server never raises, it is only ever cancelled, so this must count.
            self.record_failure(timeout=True)
            raise
        except BaseException:
            # Cancellation or an error that says nothing about the backend's health: a trial that
            # did not finish proves nothing, so the next caller gets to try.
            if trial:
                self._state = BreakerState.OPEN
            raise
        finally:
            if trial:
                self._trial_in_flight = False
        self.record_success()
        return result

    def record_success(self) -> None:
        self._failures = 0
        self._timeouts = 0
        self._state = BreakerState.CLOSED
        self.opened_at = None

    def record_failure(self, timeout: bool = False) -> None:
        self._failures += 1
        self._timeouts = self._timeouts + 1 if timeout else 0
        slow = self.timeout_threshold is not None and self._timeouts >= self.timeout_threshold
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold or slow:
            self._state = BreakerState.OPEN
            self.opened_at = self._clock()

    def _cooled_down(self) -> bool:
        return self.opened_at is None or self._clock() - self.opened_at >= self.cooldown_s

    def _open_message(self) -> str:
        left = 0.0 if self.opened_at is None else max(0.0, self.cooldown_s - (self._clock() - self.opened_at))
        return (f"circuit breaker open after {self._failures} consecutive failures; next trial call in "
                f"{left:.1f} s. The backend is down or overloaded: check the server, or raise breaker_failures")


async def retry_async(fn: Callable[..., Awaitable[T]], *args: Any, attempts: int = 2, backoff_s: float = 0.2,
                      backoff_max_s: float = 5.0, retry_on: tuple[type[BaseException], ...] = (BackendUnavailable,),
                      **kwargs: Any) -> T:
    """Await ``fn`` up to ``attempts`` times, with exponential backoff and jitter between tries.

    Args:
        fn: coroutine function to call.
        attempts: total tries (1 = no retry).
        backoff_s: first wait; it doubles each retry, plus up to ``backoff_s`` of jitter.
        backoff_max_s: longest single wait.
        retry_on: exception types worth another try; anything else is raised at once.

    Returns:
        ``fn``'s result.

    Raises:
        The last exception once the tries are used up (not tenacity's ``RetryError``).
    """
    tenacity = require("tenacity", "vlm", "retries of remote stages")
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=tenacity.wait_exponential(multiplier=backoff_s, max=backoff_max_s) + tenacity.wait_random(0, backoff_s),
        retry=tenacity.retry_if_exception_type(retry_on),
        reraise=True,
    )
    return await retrying(fn, *args, **kwargs)


class ResilienceParams(StageParams):
    """Retry and breaker settings shared by remote stages (inline keys of the stage entry)."""

    retries: int = Field(default=1, ge=0, le=10, description="extra tries after a failed request")
    retry_backoff_s: float = Field(default=0.2, ge=0, le=30, description="first backoff; doubles per retry")
    retry_timeouts: bool = Field(default=False, description="also retry requests that timed out")
    breaker_failures: int = Field(default=5, ge=1, le=1000, description="consecutive failures that open the circuit")
    breaker_timeouts: int = Field(default=2, ge=1, le=1000, description="consecutive timeouts that open the circuit "
                                  "(a frozen backend costs each call its whole timeout: it gets fewer tries)")
    breaker_cooldown_s: float = Field(default=30.0, ge=0, le=3600, description="open time before a trial call")


class Resilience:
    """A stage's retry policy wrapped in its own circuit breaker.

    The breaker sits outside the retries: one logical request counts as one failure however many
    tries it took, and an open circuit is never retried.
    """

    def __init__(self, name: str, params: ResilienceParams, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.params = params
        self.breaker = CircuitBreaker(name, failure_threshold=params.breaker_failures,
                                      cooldown_s=params.breaker_cooldown_s,
                                      counted=(BackendUnavailable, DeadlineExceeded),
                                      timeout_threshold=params.breaker_timeouts, timeouts=(DeadlineExceeded,),
                                      clock=clock)
        retry_on: tuple[type[BaseException], ...] = (BackendUnavailable,)
        if params.retry_timeouts:
            retry_on += (DeadlineExceeded,)
        self._retry_on = retry_on

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` with retries, through the breaker."""
        return await self.breaker.call(retry_async, fn, *args, attempts=self.params.retries + 1,
                                       backoff_s=self.params.retry_backoff_s, retry_on=self._retry_on)


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
    the host gives one), exposes its breaker, keeps the endpoint out of :meth:`describe` and closes
    the client in :meth:`aclose`. Subclasses implement ``predict`` and call :meth:`_loaded_chat`.
    """

    extra = "vlm"
    requires = ("httpx", "tenacity")
    runs_on = "engine"
    #: Images in one prompt (``--limit-mm-per-prompt`` of the engine ``workzone plan`` launches).
    images_per_prompt: ClassVar[int] = 0
    params: OpenAIEndpointParams

    @classmethod
    def context_tokens(cls, params: StageParams, px_per_token: int) -> int:
        """Tokens one request needs (prompt + answer), for the engine's ``--max-model-len``.

        The default is a text prompt of up to 2048 tokens (a reasoner's evidence digest).
        """
        return 2048 + int(getattr(params, "max_tokens", 0))

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
        return self.require_loaded(self.chat)

    def describe(self) -> dict[str, Any]:
        # No endpoint: /v1/pipeline shows this to every caller, and the backend's address is the
        # operator's business (it is in the pipeline file and the log).
        d = super().describe()
        d["params"].pop("base_url", None)
        d["breaker"] = None if self.breaker is None else self.breaker.snapshot()
        return d

    async def aclose(self) -> None:
        if self.chat is not None:
            await self.chat.aclose()
            self.chat = None


def collect_outputs(results: list[Any]) -> list[StageOutput]:
    """Per-image results -> outputs; if every image failed, raise the first error for the cascade.

    A partial failure (one image's request died after its retries) abstains for that image only,
    with its error type in a note and in ``error_type`` (the decision is marked degraded), so one bad
    request does not throw away the batch's other answers. The full error text, which names the
    backend URL, goes to the log only.
    """
    errors = [r for r in results if isinstance(r, BaseException)]
    for e in errors:
        if not isinstance(e, Exception):  # cancellation and friends are not ours to swallow
            raise e
    if errors and len(errors) == len(results):
        raise errors[0]
    for e in errors:  # the text names the backend URL: the log keeps it, the answer gets the type only
        log.warning("a remote request failed for one image of a batch: %s: %s", type(e).__name__, e)
    return [StageOutput(None, Evidence(notes=(f"request failed: {type(r).__name__}",)), error_type=type(r).__name__)
            if isinstance(r, BaseException) else r for r in results]


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
