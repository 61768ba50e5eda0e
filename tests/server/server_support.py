"""Helpers of the server tests: a tiny random ONNX classifier, a test-only slow stage, images,
pipeline files, and real uvicorn servers on loopback (in a thread of the test process, so the
stage registered here is visible to them)."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import numpy as np
from PIL import Image as PILImage
from pydantic import Field

from workzone.stages.base import Stage, StageParams
from workzone.stages.registry import register_stage
from workzone.types import EarlierReports, Evidence, Image, StageOutput


# -- test-only stages ------------------------------------------------------------------------------
class SleepParams(StageParams):
    sleep_s: float = Field(default=0.0, ge=0, description="seconds predict takes (asyncio.sleep, like a remote call)")
    per_megapixel_s: float = Field(default=0.0, ge=0, description="more seconds per megapixel of the batch: work "
                                   "that grows with the image, as a detector's resize does")
    load_s: float = Field(default=0.0, ge=0, description="seconds load takes")
    log_odds: float = 2.0
    fail: bool = Field(default=False, description="raise from predict instead of answering")


@register_stage("test_sleep", replace=True)
class SleepStage(Stage):
    """A slow (or failing) stage standing in for a remote VLM tier."""

    Params = SleepParams
    params: SleepParams

    async def load(self) -> None:
        await asyncio.sleep(self.params.load_s)

    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        megapixels = sum(im.width * im.height for im in batch) / 1e6
        await asyncio.sleep(self.params.sleep_s + self.params.per_megapixel_s * megapixels)
        if self.params.fail:
            raise RuntimeError("test_sleep stage told to fail")
        return [StageOutput(self.params.log_odds, Evidence(notes=(f"slept {self.params.sleep_s}s",)))
                for _ in batch]


# -- models, images, pipelines -----------------------------------------------------------------------
def build_tiny_classifier(path: Path, size: int = 32, seed: int = 0) -> Path:
    """A random ONNX classifier with the workzone contract: image [N,3,S,S] in [0,1] -> logit [N]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.normal(size=(3, 1)) * 4).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([-0.5], np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1], np.int64), "shape")
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["logit"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_roadwork",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])],
        initializer=[w, b, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    path.with_suffix(".json").write_text(f'{{"input_size": {size}, "resize": "squash"}}')
    return path


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, quality: int = 75) -> bytes:
    rng = np.random.default_rng(seed)
    px = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(px).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


FAST_TIER = """\
  - name: fast
    stages:
      - name: clf
        kind: onnx_classifier
        model: tiny.onnx
        threads: 1
"""


def slow_first_tier(sleep_s: float) -> str:
    """A first tier that runs the tiny classifier and then sleeps ``sleep_s`` per batch: work that takes time."""
    return f"""\
  - name: slow
    stages:
      - name: clf
        kind: onnx_classifier
        model: tiny.onnx
        threads: 1
      - name: wait
        kind: test_sleep
        sleep_s: {sleep_s}
"""


def write_pipeline(folder: Path, name: str, more_tiers: str = "", deadline_s: float = 5.0,
                   first_tier: str = FAST_TIER) -> Path:
    """A pipeline file next to the tiny model: the fast ONNX tier, then ``more_tiers`` (YAML list items
    indented by two spaces, like ``FAST_TIER``)."""
    text = f"name: {name}\ndeadline_s: {deadline_s}\ntiers:\n{first_tier}{more_tiers}"
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# -- live servers ------------------------------------------------------------------------------------
def wait_until_ready(proc: Any, url: str, timeout: float = 30.0) -> None:
    """Wait until the ``workzone serve`` process ``proc`` answers ``/readyz`` with 200 at ``url``; fail the test
    with its output if it exits first, or if ``timeout`` passes."""
    end = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < end, "server did not become ready"
        time.sleep(0.1)



class LiveServer:
    """A real uvicorn server on 127.0.0.1, in a background thread of this process."""

    def __init__(self, **settings: Any) -> None:
        from workzone.server.app import create_app, create_server
        from workzone.server.settings import ServerSettings

        self.settings = ServerSettings(host="127.0.0.1", port=0, log_level="warning", **settings)
        self.app = create_app(self.settings)
        self.server = create_server(self.settings, self.app)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> "LiveServer":
        self.thread.start()
        end = time.monotonic() + timeout
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < end:
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server did not answer {path} within {timeout} s (error: {self.error})")

    def signal_shutdown(self) -> None:
        """What SIGTERM does: uvicorn's exit handler (ours first makes the service refuse work)."""
        import signal

        self.server.handle_exit(signal.SIGTERM, None)

    def stop(self, timeout: float = 20.0) -> None:
        if self.thread.is_alive():
            self.signal_shutdown()
            self.thread.join(timeout)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text


def live_servers() -> Iterator[Any]:
    """Body of the ``live_server`` fixtures: yields ``start(**settings)`` -> started LiveServer, then
    stops every server started."""
    servers: list[LiveServer] = []

    def start(wait_ready: bool = True, **settings: Any) -> LiveServer:
        srv = LiveServer(**settings)
        servers.append(srv)
        return srv.start(wait_ready=wait_ready)

    yield start
    for srv in servers:
        srv.stop()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
                found = True
    if not found:
        raise KeyError(f"no sample {name} {labels or ''}")
    return total


