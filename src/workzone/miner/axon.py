"""Serve the SN72 synapses on a Bittensor axon (needs the ``miner`` extra).

:func:`build_axon` and :func:`attach_handlers` are what the tests run on loopback with real keys;
:func:`run_miner` adds the chain: wallet, subtensor, metagraph, registration check, ``axon.serve``
and a periodic metagraph refresh, until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Any, Tuple

from workzone._optional import require
from workzone.errors import ConfigError
from workzone.miner.service import MetagraphView, MinerService, ServiceLoop
from workzone.miner.settings import MinerSettings
from workzone.miner.synapse import SYNAPSES, ExtendedImageSynapse, ImageSynapse

__all__ = ["build_axon", "attach_handlers", "chain_endpoint", "run_miner"]

log = logging.getLogger("workzone.miner")


def build_axon(settings: MinerSettings, wallet: Any) -> Any:
    """A bittensor axon for ``wallet`` bound as ``settings`` says (not started, nothing attached)."""
    bt = require("bittensor", "miner", "the SN72 miner")
    parser = argparse.ArgumentParser()
    bt.Axon.add_args(parser)
    # bt.Config reads sys.argv when given no arguments; give it some so the CLI's own flags are
    # never parsed a second time by bittensor.
    config = bt.Config(parser, args=["--axon.port", str(settings.axon_port)])
    return bt.Axon(wallet=wallet, config=config, port=settings.axon_port, ip=settings.axon_ip,
                   external_ip=settings.external_ip, external_port=settings.external_port)


def attach_handlers(axon: Any, service: MinerService, loop: ServiceLoop) -> None:
    """Attach forward, blacklist and priority handlers for every SN72 synapse class."""
    for cls in SYNAPSES:
        forward, blacklist, priority = _handlers(cls, service, loop)
        axon.attach(forward_fn=forward, blacklist_fn=blacklist, priority_fn=priority)


def _handlers(cls: type[ImageSynapse], service: MinerService, loop: ServiceLoop) -> tuple[Any, Any, Any]:
    model_url = service.settings.model_url

    async def forward(synapse):  # type: ignore[no-untyped-def]
        answer = await loop.call(service.answer(synapse.image, getattr(synapse, "timeout", None)))
        synapse.prediction = answer.prediction
        if isinstance(synapse, ExtendedImageSynapse):
            synapse.explanation = answer.explanation
            synapse.model_url = model_url
        log.info("challenge from %s: prediction %.4f (%s, %.0f ms)%s", _hotkey(synapse), answer.prediction,
                 answer.source, answer.latency_ms, f" error: {answer.error}" if answer.error else "")
        return synapse

    async def blacklist(synapse):  # type: ignore[no-untyped-def]
        refuse, reason = service.blacklist(_hotkey(synapse))
        if refuse:
            log.info("refused %s: %s", _hotkey(synapse), reason)
        return refuse, reason

    async def priority(synapse):  # type: ignore[no-untyped-def]
        return service.priority(_hotkey(synapse))

    # The axon checks these exact signatures and routes by the annotated class's name, so the
    # annotations are set per class (they cannot be written literally for a loop variable).
    forward.__annotations__ = {"synapse": cls, "return": cls}
    blacklist.__annotations__ = {"synapse": cls, "return": Tuple[bool, str]}
    priority.__annotations__ = {"synapse": cls, "return": float}
    return forward, blacklist, priority


def _hotkey(synapse: Any) -> str | None:
    dendrite = getattr(synapse, "dendrite", None)
    return getattr(dendrite, "hotkey", None)


class _MetagraphHolder:
    def __init__(self, metagraph: MetagraphView) -> None:
        self._metagraph = metagraph
        self._lock = threading.Lock()

    def get(self) -> MetagraphView:
        with self._lock:
            return self._metagraph

    def set(self, metagraph: MetagraphView) -> None:
        with self._lock:
            self._metagraph = metagraph


def chain_endpoint(settings: MinerSettings) -> str:
    """The websocket URL the miner talks to: ``--subtensor.chain_endpoint``, else the network's own."""
    if settings.chain_endpoint:
        return settings.chain_endpoint
    try:
        from bittensor.core.settings import NETWORK_MAP

        return str(NETWORK_MAP.get(settings.network, settings.network))
    except ImportError:  # an older bittensor layout: the network name is all there is to show
        return settings.network


def _connect(bt: Any, settings: MinerSettings) -> tuple[Any, Any]:
    """Subtensor and metagraph, or one sentence naming the endpoint and the flags when the chain is unreachable."""
    url = chain_endpoint(settings)
    try:
        subtensor = bt.Subtensor(network=settings.chain_endpoint or settings.network)
        return subtensor, subtensor.metagraph(settings.netuid)
    except Exception as exc:  # noqa: BLE001 - bittensor raises socket, websocket and substrate errors alike
        raise ConfigError(
            f"workzone miner: cannot reach the subtensor at {url} (network {settings.network!r}, netuid "
            f"{settings.netuid}): {type(exc).__name__}: {str(exc) or 'no answer'}. Check this machine's network, or "
            "point the miner at a node it can reach with --subtensor.chain_endpoint ws://HOST:9944 (or "
            "--subtensor.network test / local)") from exc


def run_miner(settings: MinerSettings) -> None:
    """Run the miner until SIGINT/SIGTERM.

    Raises:
        ConfigError: the chain cannot be reached, or the wallet's hotkey is not registered on the subnet.
        MissingExtraError: bittensor is not installed.
    """
    bt = require("bittensor", "miner", "the SN72 miner")
    wallet = bt.Wallet(name=settings.wallet_name, hotkey=settings.wallet_hotkey, path=settings.wallet_path)
    subtensor, metagraph = _connect(bt, settings)
    hotkey = wallet.hotkey.ss58_address
    if hotkey not in metagraph.hotkeys:
        raise ConfigError(
            f"hotkey {hotkey} (wallet {settings.wallet_name}/{settings.wallet_hotkey}) is not registered on netuid "
            f"{settings.netuid} of {settings.network}; register it first: btcli subnet register --netuid "
            f"{settings.netuid} --wallet.name {settings.wallet_name} --wallet.hotkey {settings.wallet_hotkey}"
        )
    holder = _MetagraphHolder(metagraph)
    loop = ServiceLoop()
    detection = MinerService.build_detection(settings)
    try:
        log.info("loading pipeline %s", settings.pipeline)
        loop.run(detection.start())
        service = MinerService(detection, settings, holder.get)
        axon = build_axon(settings, wallet)
        attach_handlers(axon, service, loop)
        axon.serve(netuid=settings.netuid, subtensor=subtensor)
        axon.start()
        log.info("miner serving on port %d, netuid %d, uid %d", settings.axon_port, settings.netuid,
                 list(metagraph.hotkeys).index(hotkey))
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        next_sync = time.monotonic() + settings.metagraph_sync_s
        while not stop.wait(1.0):
            if time.monotonic() < next_sync:
                continue
            next_sync = time.monotonic() + settings.metagraph_sync_s
            try:
                metagraph.sync(subtensor=subtensor)
                holder.set(metagraph)
            except Exception as exc:  # noqa: BLE001 - keep serving on the last known metagraph
                log.warning("metagraph refresh failed (%s); keeping the previous one", exc)
        log.info("stopping: no new challenges, finishing queued ones")
        axon.stop()
    finally:
        loop.run(detection.aclose(timeout=10))
        loop.stop()
