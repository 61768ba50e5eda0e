"""The serve app behind Ray Serve: a real local Ray instance, one replica, a real HTTP request."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import encode, solid
from workzone.errors import ConfigError

serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")


def test_bad_setting_is_refused_before_any_replica_starts() -> None:
    from workzone.server.ray_serve import app_builder

    with pytest.raises(ConfigError, match="pipline"):
        app_builder({"pipline": "default"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_detect_through_a_ray_serve_replica(tiny_model) -> None:
    import ray

    from workzone.server.ray_serve import app_builder

    pipeline = tiny_model.parent / "p.yaml"  # red images score high, blue ones low
    pipeline.write_text("name: tiny\ntiers:\n  - name: whole\n    stages: [{name: cls, kind: onnx_classifier, model: tiny.onnx}]\n")
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_builder({"pipeline": str(pipeline), "num_replicas": "1", "num_cpus": "1", "batch_size": "4"}),
                  route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the replica never became ready"
                time.sleep(0.5)
            red = client.post("/v1/detect", files={"image": ("r.png", encode(solid((220, 30, 30)), "PNG"))})
            blue = client.post("/v1/detect", files={"image": ("b.png", encode(solid((30, 30, 220)), "PNG"))})
        assert red.status_code == blue.status_code == 200, red.text
        assert red.json()["label"] is True and blue.json()["label"] is False
    finally:
        serve.shutdown()
        ray.shutdown()
