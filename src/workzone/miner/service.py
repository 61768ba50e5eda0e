"""What the SN72 miner does with a challenge, independent of bittensor.

The contract with validators: ``prediction`` is P(road work), a finite float in [0, 1], sent
before their 9 s timeout; strictly above 0.5 counts as road work. So:

* the cascade runs under a deadline well inside the caller's timeout; tiers not done by then are
  skipped and the answer comes from the tiers that finished (the cascade does this);
* a failing or slow stage is recorded and skipped by the cascade, never surfacing here;
* if anything else goes wrong after the image decoded (queue full, a bug, the hard timeout),
  the answer is the pipeline's prior instead of nothing;
* only an input that is not an image keeps the upstream "no answer" value, -1.0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, TypeVar

from workzone._loop import LoopThread
from workzone.answer import public_answer
from workzone.micro_batcher import BatchPolicy
from workzone.errors import InvalidImageError
from workzone.fusion.rules import prior_probability
from workzone.io.images import ImageLimits, decode_base64
from workzone.miner.settings import MinerSettings
from workzone.service import DetectionService
from workzone.types import Decision

__all__ = ["MinerService", "MinerAnswer", "MetagraphView", "ServiceLoop", "NO_ANSWER", "explain"]

log = logging.getLogger("workzone.miner")

#: The synapse's default prediction, kept only when the challenge is not a decodable image.
NO_ANSWER = -1.0

T = TypeVar("T")


class MetagraphView(Protocol):
    """The parts of a bittensor metagraph the miner reads (a local object in tests)."""

    hotkeys: Sequence[str]
    validator_permit: Sequence[Any]
    S: Sequence[Any]


@dataclass(frozen=True)
class MinerAnswer:
    """What goes back in the synapse.

    Attributes:
        prediction: P(road work) in [0, 1], or -1.0 when the image could not be decoded.
        explanation: short text naming the visual evidence (ExtendedImageSynapse.explanation).
        source: "cascade", "fallback" (prior after an error or timeout) or "invalid"; a cascade
            answer that skipped failed stages or tiers says so in ``decision.degraded_reason``.
        decision: the cascade's decision, when it answered.
        error: what went wrong, if anything.
        latency_ms: handling time.
    """

    prediction: float
    explanation: str = ""
    source: str = "cascade"
    decision: Decision | None = None
    error: str | None = None
    latency_ms: float = 0.0


class MinerService:
    """Answers challenges with a :class:`DetectionService`, within the deadline, always with a number.

    Args:
        detection: the (started) detection service; its coroutines run on the caller's loop.
        settings: deadlines and caller policy.
        metagraph: returns the current metagraph view (it is replaced on every resync).
    """

    def __init__(self, detection: DetectionService, settings: MinerSettings,
                 metagraph: Callable[[], MetagraphView | None]) -> None:
        self.detection = detection
        self.settings = settings
        self.metagraph = metagraph
        self.prior = prior_probability(detection.config.tiers[0].fusion)

    @classmethod
    def build_detection(cls, settings: MinerSettings) -> DetectionService:
        """The detection service the miner settings describe (validated, not loaded)."""
        limits = ImageLimits(max_bytes=settings.max_image_bytes)
        policy = BatchPolicy(max_batch_size=settings.batch_size, max_wait_s=settings.batch_wait_ms / 1000.0,
                             max_queue=settings.queue_size)
        return DetectionService.from_pipeline(settings.pipeline, device=settings.device, limits=limits, policy=policy,
                                              max_deadline_s=settings.deadline_s)

    def budget_s(self, caller_timeout_s: float | None) -> float:
        """Seconds the cascade may use: the configured deadline, inside the caller's timeout."""
        budget = self.settings.deadline_s
        if caller_timeout_s is not None and math.isfinite(caller_timeout_s) and caller_timeout_s > 0:
            budget = min(budget, caller_timeout_s - self.settings.response_margin_s)
        return max(0.05, budget)

    async def answer(self, image_b64: str | bytes | None, caller_timeout_s: float | None = None) -> MinerAnswer:
        """Decide one challenge image; never raises."""
        t0 = time.perf_counter()
        budget = self.budget_s(caller_timeout_s)
        try:
            text = image_b64.decode("ascii") if isinstance(image_b64, (bytes, bytearray)) else (image_b64 or "")
            image = await self.detection.decode(decode_base64(text), "synapse")
        except (InvalidImageError, UnicodeDecodeError) as exc:
            return MinerAnswer(NO_ANSWER, source="invalid", error=str(exc), latency_ms=_ms(t0))
        remaining = budget - (time.perf_counter() - t0)
        try:
            # The cascade stops slow tiers at its deadline; the hard timeout (a little later) only
            # catches what the cascade cannot (a stage blocking the event loop, a stuck queue).
            decision = await asyncio.wait_for(self.detection.detect(image, deadline_s=max(0.01, remaining * 0.9)),
                                              timeout=max(0.02, remaining))
        except Exception as exc:  # noqa: BLE001 - the validator still gets a number
            log.warning("challenge answered with the prior (%s: %s)", type(exc).__name__, exc)
            return MinerAnswer(self.prior, source="fallback", error=f"{type(exc).__name__}: {exc}",
                               latency_ms=_ms(t0))
        if decision.degraded:
            log.warning("challenge answered degraded: %s", decision.degraded_reason)
        p = decision.probability
        if not math.isfinite(p):  # Decision validates this; kept because the contract is absolute
            return MinerAnswer(self.prior, source="fallback", error="non-finite probability", latency_ms=_ms(t0))
        return MinerAnswer(min(1.0, max(0.0, float(p))), explain(decision), "cascade", decision, latency_ms=_ms(t0))

    # -- callers ---------------------------------------------------------------------------------
    def blacklist(self, hotkey: str | None) -> tuple[bool, str]:
        """(refuse?, reason) for a caller: unknown hotkeys and, by default, non-validators are refused."""
        if not hotkey:
            return True, "missing dendrite hotkey"
        mg = self.metagraph()
        hotkeys = list(mg.hotkeys) if mg is not None else []
        if hotkey not in hotkeys:
            if not self.settings.allow_non_registered:
                return True, "unrecognized hotkey: not registered on this subnet"
            # Allowed unregistered callers hold no validator permit either: they must not get more
            # than a registered non-validator does.
            if self.settings.force_validator_permit:
                return True, "non-registered hotkey: no validator permit (allow_non_registered needs " \
                             "force_validator_permit off)"
            return False, "non-registered hotkey allowed by settings"
        uid = hotkeys.index(hotkey)
        if self.settings.force_validator_permit and not _at(mg.validator_permit, uid, False):
            return True, "non-validator hotkey: no validator permit"
        return False, "hotkey recognized"

    def priority(self, hotkey: str | None) -> float:
        """The caller's stake (validators with more stake are served first)."""
        mg = self.metagraph()
        if not hotkey or mg is None or hotkey not in mg.hotkeys:
            return 0.0
        return float(_at(mg.S, list(mg.hotkeys).index(hotkey), 0.0))


def explain(decision: Decision, limit: int = 300) -> str:
    """A short text naming the visual evidence, for ``ExtendedImageSynapse.explanation``.

    Upstream asks for one when the prediction is above 0.5; it is empty otherwise. It is read from the
    decision's public answer, so the miner tells a validator nothing the HTTP answer would not.
    """
    answer = public_answer(decision)
    if not answer["label"]:
        return ""
    parts: list[str] = []
    for rep in answer["stages"]:
        ev = rep["evidence"]
        parts += [f"{b['label']} ({b['score']:.2f})" for b in ev["boxes"]]
        parts += [f"sign text '{t['text']}'" + (f" ~ {t['matched']}" if t["matched"] else "") for t in ev["texts"]]
        parts += ev["notes"]
    if not parts:
        parts = [f"road work likely (p={answer['probability']:.2f}, decided by tier {answer['exit_tier_name']})"]
    out = "; ".join(dict.fromkeys(parts))
    return out if len(out) <= limit else out[:limit - 1] + "…"


class ServiceLoop(LoopThread):
    """The event loop (in a daemon thread) that owns the detection service.

    The axon calls handlers on its own loop (uvicorn's, in the axon's thread); the cascade and its
    batcher live here, so neither loop blocks the other.
    """

    def __init__(self) -> None:
        super().__init__("workzone-miner-loop")


def _at(seq: Sequence[Any], i: int, default: Any) -> Any:
    try:
        value = seq[i]
    except (IndexError, TypeError, KeyError):
        return default
    return value.item() if hasattr(value, "item") else value


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
