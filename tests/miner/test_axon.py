"""A real bittensor axon on loopback, keys from temporary wallets, called by a real dendrite.

The metagraph is a local object; the transport (HTTP, signatures, nonces, blacklist, timeouts) is
bittensor's own.
"""

from __future__ import annotations

import asyncio
import base64
import math
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

bt = pytest.importorskip("bittensor")

from miner_support import LocalMetagraph  # noqa: E402
from server_support import jpeg_bytes  # noqa: E402
from workzone.miner.axon import attach_handlers, build_axon  # noqa: E402
from workzone.miner.service import NO_ANSWER, MinerService, ServiceLoop  # noqa: E402
from workzone.miner.settings import MinerSettings  # noqa: E402
from workzone.miner.synapse import ExtendedImageSynapse, ImageSynapse  # noqa: E402


def make_wallet(root: Path, name: str) -> Any:
    wallet = bt.Wallet(name=name, hotkey="default", path=str(root))
    wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return wallet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def loopback_only() -> Iterator[None]:
    """bt.Dendrite() asks public web services for this machine's IP when it is built; these tests
    live on loopback (and may not leave it), so that one lookup answers 127.0.0.1."""
    from bittensor.utils import networking

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(networking, "get_external_ip", lambda: "127.0.0.1")
        yield


@pytest.fixture(scope="module")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("wallets")
    return {name: make_wallet(root, name) for name in ("miner", "validator", "plain", "stranger")}


class Miner:
    """The miner's axon and service, on loopback."""

    def __init__(self, pipeline: Path, wallets: dict[str, Any], **settings: Any) -> None:
        self.settings = MinerSettings(pipeline=str(pipeline), axon_ip="127.0.0.1", axon_port=free_port(),
                                      external_ip="127.0.0.1", model_url="https://example.org/model", **settings)
        hk = {k: w.hotkey.ss58_address for k, w in wallets.items()}
        self.metagraph = LocalMetagraph(hotkeys=[hk["miner"], hk["validator"], hk["plain"]],
                                        validator_permit=[False, True, False], S=[0.0, 1000.0, 3.0])
        self.loop = ServiceLoop()
        detection = MinerService.build_detection(self.settings)
        self.loop.run(detection.start())
        self.service = MinerService(detection, self.settings, lambda: self.metagraph)
        self.axon = build_axon(self.settings, wallets["miner"])
        attach_handlers(self.axon, self.service, self.loop)
        self.axon.start()
        self.wait_listening()

    def wait_listening(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.settings.axon_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the axon did not start listening")

    def stop(self) -> None:
        self.axon.stop()
        self.loop.run(self.service.detection.aclose(timeout=5))
        self.loop.stop()


def query(wallet: Any, miner: Miner, synapse: Any, timeout: float = 9.0) -> Any:
    async def go() -> Any:
        dendrite = bt.Dendrite(wallet=wallet)
        try:
            (resp,) = await dendrite(axons=[miner.axon.info()], synapse=synapse, deserialize=False, timeout=timeout)
            return resp
        finally:
            await dendrite.aclose_session()

    return asyncio.run(go())


def b64_jpeg(width: int, height: int, seed: int = 0) -> str:
    return base64.b64encode(jpeg_bytes(width, height, seed=seed, quality=75)).decode()


def check_prediction(resp: Any) -> float:
    assert resp.dendrite.status_code == 200, resp.dendrite.status_message
    p = resp.prediction
    assert isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0
    return p


@pytest.fixture(scope="module")
def fast_miner(pipelines: dict[str, Path], wallets: dict[str, Any]) -> Iterator[Miner]:
    miner = Miner(pipelines["fast"], wallets)
    yield miner
    miner.stop()


def test_jpeg_q75_at_224_answers_the_cascade_probability(fast_miner: Miner, wallets: dict[str, Any]) -> None:
    import workzone

    image = b64_jpeg(224, 224, seed=11)
    resp = query(wallets["validator"], fast_miner, ImageSynapse(image=image))
    p = check_prediction(resp)
    with workzone.load_pipeline(fast_miner.settings.pipeline) as pipe:
        assert p == pytest.approx(pipe.predict(base64.b64decode(image)).probability)


def test_jpeg_at_native_size(fast_miner: Miner, wallets: dict[str, Any]) -> None:
    resp = query(wallets["validator"], fast_miner, ImageSynapse(image=b64_jpeg(1920, 1080, seed=2)))
    check_prediction(resp)


def test_extended_synapse_carries_model_url_and_explanation(fast_miner: Miner, wallets: dict[str, Any]) -> None:
    for seed in range(6):
        resp = query(wallets["validator"], fast_miner, ExtendedImageSynapse(image=b64_jpeg(224, 224, seed=seed)))
        p = check_prediction(resp)
        assert resp.model_url == "https://example.org/model"
        assert bool(resp.explanation) == (p > 0.5)


@pytest.mark.parametrize("image", ["!!!not-base64!!!", "", base64.b64encode(b"GIF89a-but-not-really").decode()])
def test_undecodable_image_keeps_minus_one(fast_miner: Miner, wallets: dict[str, Any], image: str) -> None:
    resp = query(wallets["validator"], fast_miner, ImageSynapse(image=image))
    assert resp.dendrite.status_code == 200
    assert resp.prediction == NO_ANSWER


def test_unregistered_caller_is_blacklisted(fast_miner: Miner, wallets: dict[str, Any]) -> None:
    resp = query(wallets["stranger"], fast_miner, ImageSynapse(image=b64_jpeg(224, 224)))
    assert resp.dendrite.status_code != 200
    assert resp.prediction == -1.0  # not processed


def test_caller_without_validator_permit_is_blacklisted(fast_miner: Miner, wallets: dict[str, Any]) -> None:
    resp = query(wallets["plain"], fast_miner, ImageSynapse(image=b64_jpeg(224, 224)))
    assert resp.dendrite.status_code != 200 and resp.prediction == -1.0


def test_miner_answers_in_time_when_tier2_sleeps_past_the_deadline(pipelines: dict[str, Path],
                                                                  wallets: dict[str, Any]) -> None:
    miner = Miner(pipelines["sleepy"], wallets, deadline_s=2.0)
    try:
        t = time.perf_counter()
        resp = query(wallets["validator"], miner, ImageSynapse(image=b64_jpeg(224, 224)), timeout=9.0)
        elapsed = time.perf_counter() - t
        check_prediction(resp)
        assert elapsed < 4.0  # tier 2 would take 30 s; the validator waits 9 s
    finally:
        miner.stop()


def test_miner_answers_when_tier2_raises(pipelines: dict[str, Path], wallets: dict[str, Any]) -> None:
    miner = Miner(pipelines["failing"], wallets)
    try:
        resp = query(wallets["validator"], miner, ExtendedImageSynapse(image=b64_jpeg(224, 224, seed=4)))
        check_prediction(resp)
    finally:
        miner.stop()


def test_synapse_fields_match_upstream() -> None:
    s = ImageSynapse()
    assert (s.image, s.prediction, s.testnet_label) == ("", -1.0, -1)
    assert ImageSynapse.model_fields["prediction"].annotation is float
    e = ExtendedImageSynapse(image="abc")
    assert (e.model_url, e.explanation, e.deserialize()) == ("", "", -1.0)
    assert isinstance(e, ImageSynapse) and ExtendedImageSynapse.__name__ == "ExtendedImageSynapse"


def test_an_unreachable_chain_is_one_sentence_naming_the_endpoint_and_the_flag(tmp_path: Path) -> None:
    from workzone.errors import ConfigError
    from workzone.miner.axon import run_miner

    make_wallet(tmp_path, "offline")
    endpoint = f"ws://127.0.0.1:{free_port()}"  # nothing listens there: what a machine without a network meets
    settings = MinerSettings(wallet_name="offline", wallet_path=str(tmp_path), chain_endpoint=endpoint)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        run_miner(settings)
    msg = str(info.value)
    assert msg.startswith(f"workzone miner: cannot reach the subtensor at {endpoint}")
    assert "--subtensor.chain_endpoint" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 60
