"""Helpers of the miner tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LocalMetagraph:
    """The three metagraph fields the miner reads, as bittensor's Metagraph exposes them."""

    hotkeys: list[str] = field(default_factory=list)
    validator_permit: list[bool] = field(default_factory=list)
    S: list[float] = field(default_factory=list)


def slow_tier(sleep_s: float = 0.0, fail: bool = False) -> str:
    return ("  - name: vlm\n    stages:\n      - name: vlm\n        kind: test_sleep\n"
            f"        sleep_s: {sleep_s}\n        fail: {str(fail).lower()}\n        log_odds: 4.0\n")
