"""Miner settings: the only reader of environment variables for ``workzone miner``.

Each field is ``WORKZONE_MINER_<FIELD>`` in the environment (``WORKZONE_MINER_WALLET_NAME``,
``WORKZONE_MINER_NETUID``, ...) or the matching CLI flag, which wins; the flags also accept the
upstream miner's dotted spellings (``--wallet.name``, ``--subtensor.network``, ``--axon.port``).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MinerSettings"]

#: The validators' dendrite timeout for SN72 image challenges (natix/validator/forward.py).
VALIDATOR_TIMEOUT_S = 9.0


class MinerSettings(BaseSettings):
    """Everything ``workzone miner`` can be told."""

    model_config = SettingsConfigDict(env_prefix="WORKZONE_MINER_", extra="forbid", frozen=True,
                                      protected_namespaces=())

    # -- what answers ------------------------------------------------------------------------------
    pipeline: str = Field(default="default", description="built-in pipeline name or YAML path")
    device: str = Field(default="cpu", description="compute device for stages that have one")
    deadline_s: float = Field(default=6.0, gt=0, lt=VALIDATOR_TIMEOUT_S,
                              description="answer within this many seconds; unfinished tiers are skipped")
    response_margin_s: float = Field(default=1.0, ge=0, description="kept free of the caller's timeout for transfer")
    batch_size: int = Field(default=8, ge=1, description="images the cascade runs together")
    batch_wait_ms: float = Field(default=2.0, ge=0, description="longest wait for a batch to fill")
    queue_size: int = Field(default=64, ge=1, description="challenges waiting before new ones get the fallback")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="largest decoded base64 payload")
    model_url: str = Field(default="", description="sent back in ExtendedImageSynapse.model_url (as upstream)")

    # -- Bittensor identity and network -------------------------------------------------------------
    wallet_name: str = Field(default="default", description="coldkey wallet name (--wallet.name)")
    wallet_hotkey: str = Field(default="default", description="hotkey name (--wallet.hotkey)")
    wallet_path: str = Field(default="~/.bittensor/wallets", description="wallets folder (--wallet.path)")
    netuid: int = Field(default=72, ge=0, description="subnet uid (SN72 = NATIX StreetVision)")
    network: str = Field(default="finney", description="subtensor network: finney, test, local (--subtensor.network)")
    chain_endpoint: str | None = Field(default=None, description="explicit subtensor websocket endpoint")
    axon_ip: str = Field(default="[::]", description="interface the axon binds")
    axon_port: int = Field(default=8091, ge=1, le=65535, description="port the axon binds (--axon.port)")
    external_ip: str | None = Field(default=None, description="IP announced on chain (default: detected)")
    external_port: int | None = Field(default=None, ge=1, le=65535, description="port announced on chain")
    metagraph_sync_s: float = Field(default=300.0, gt=0, description="seconds between metagraph refreshes")

    # -- who may call --------------------------------------------------------------------------------
    force_validator_permit: bool = Field(default=True, description="answer only hotkeys holding a validator permit")
    allow_non_registered: bool = Field(default=False, description="answer hotkeys not registered on the subnet "
                                       "(dangerous; for local tests)")

    @model_validator(mode="after")
    def _fits(self) -> "MinerSettings":
        if self.deadline_s + self.response_margin_s >= VALIDATOR_TIMEOUT_S:
            raise ValueError(f"deadline_s ({self.deadline_s}) + response_margin_s ({self.response_margin_s}) must "
                             f"stay below the validators' {VALIDATOR_TIMEOUT_S:g} s timeout")
        return self
