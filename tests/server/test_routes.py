"""Every endpoint of a real server on loopback, with good input and bad input of every kind."""

from __future__ import annotations

import base64
import struct
import time
import zlib
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from server_support import LiveServer, jpeg_bytes, metric_value, write_pipeline


def huge_png(width: int = 20_000, height: int = 10_000) -> bytes:
    """A PNG whose header claims width*height pixels (200 MP by default), with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[LiveServer]:
    pipeline = write_pipeline(model_dir, "routes")
    srv = LiveServer(pipeline=str(pipeline), max_body_bytes=256 * 1024).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def check_decision(d: dict) -> None:
    assert 0.0 <= d["probability"] <= 1.0
    assert d["label"] == (d["probability"] > 0.5)
    assert d["label_name"] == ("roadwork" if d["label"] else "none")
    assert [s["stage"] for s in d["stages"]] == ["clf"]
    assert d["stages"][0]["kind"] == "onnx_classifier"
    assert d["reason"] == "last tier"
    assert d["tier_probabilities"][-1] == pytest.approx(d["probability"])


# -- ops endpoints -----------------------------------------------------------------------------------
def test_health_ready_and_pipeline(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["state"] == "ready"
    p = client.get("/v1/pipeline").json()
    assert p["name"] == "routes" and p["ready"] is True
    assert p["tiers"][0]["stages"][0]["kind"] == "onnx_classifier"
    assert p["tiers"][0]["stages"][0]["params"]["model"] == "tiny.onnx"


def test_openapi_documents_every_field(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("DetectRequest", "BatchDetectRequest", "DecisionResponse", "StageReportModel", "TierEventModel",
                 "ErrorResponse"):
        assert name in schemas, name
    ours = [n for n in schemas if n not in ("HTTPValidationError", "ValidationError")]
    assert len(ours) >= 15
    for name in ours:
        props = schemas[name].get("properties", {})
        undocumented = [k for k, v in props.items() if "description" not in v]
        assert not undocumented, f"{name}: {undocumented}"
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/*", "application/octet-stream"} <= set(body)
    assert {"/healthz", "/readyz", "/metrics", "/v1/pipeline", "/v1/detect/batch", "/v1/detect/stream"} <= set(
        spec["paths"])


# -- /v1/detect, every input form -------------------------------------------------------------------
def test_detect_raw_bytes(client: httpx.Client) -> None:
    for ctype in ("image/jpeg", "application/octet-stream"):
        r = client.post("/v1/detect", content=jpeg_bytes(), headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        check_decision(r.json())
        assert r.json()["source"] == "body"


def test_detect_multipart(client: httpx.Client) -> None:
    r = client.post("/v1/detect", files={"image": ("cones.jpg", jpeg_bytes(), "image/jpeg")},
                    data={"deadline_s": "2"})
    assert r.status_code == 200, r.text
    check_decision(r.json())
    assert r.json()["source"] == "upload:cones.jpg"


def test_detect_json_base64_and_data_url(client: httpx.Client) -> None:
    b64 = base64.b64encode(jpeg_bytes()).decode()
    a = client.post("/v1/detect", json={"image": b64})
    b = client.post("/v1/detect", json={"image": "data:image/jpeg;base64," + b64, "deadline_s": 3})
    assert a.status_code == b.status_code == 200
    check_decision(a.json())
    assert a.json()["probability"] == pytest.approx(b.json()["probability"])  # same pixels, same answer


def test_detect_batch_json_with_a_bad_item(client: httpx.Client) -> None:
    good = base64.b64encode(jpeg_bytes(seed=1)).decode()
    r = client.post("/v1/detect/batch", json={"images": [{"image": good}, {"image": "not base64!!"},
                                                         {"image": good}]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2]
    check_decision(res[0]["decision"])
    assert res[1]["decision"] is None and res[1]["error"]["type"] == "invalid_image"
    assert res[2]["decision"]["probability"] == pytest.approx(res[0]["decision"]["probability"])


def test_detect_batch_multipart(client: httpx.Client) -> None:
    files = [("images", (f"{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(3)]
    r = client.post("/v1/detect/batch", files=files)
    assert r.status_code == 200, r.text
    assert [x["decision"]["source"] for x in r.json()["results"]] == ["upload:0.jpg", "upload:1.jpg", "upload:2.jpg"]


# -- bad input of every kind ------------------------------------------------------------------------
@pytest.mark.parametrize("body, ctype, status, kind", [
    (b"this is not an image at all", "image/jpeg", 422, "invalid_image"),
    (jpeg_bytes()[:300], "image/jpeg", 422, "invalid_image"),           # truncated JPEG
    (b"", "image/jpeg", 422, "invalid_image"),                          # empty body
    (jpeg_bytes(), "text/plain", 415, "unsupported_media_type"),
    (jpeg_bytes(), None, 415, "unsupported_media_type"),
    (b'{"image": "@@@"}', "application/json", 422, "invalid_image"),   # not base64
    (b'{"deadline_s": 1}', "application/json", 422, "validation_error"),  # no image
    (b'{"image": "aGk=", "url": "http://x"}', "application/json", 422, "validation_error"),  # both
    (b'{"image": ', "application/json", 422, "validation_error"),     # malformed JSON
    (b'{"url": "http://example.com/a.jpg"}', "application/json", 403, "url_not_allowed"),  # URLs disabled
])
def test_bad_input(client: httpx.Client, body: bytes, ctype: str | None, status: int, kind: str) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/v1/detect", content=body, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind and err["status"] == status and err["message"]


def test_decompression_bomb_is_refused_before_decoding(client: httpx.Client) -> None:
    png = huge_png()
    assert len(png) < 1000  # a 200-megapixel claim in a few hundred bytes
    t = time.perf_counter()
    r = client.post("/v1/detect", content=png, headers={"content-type": "image/png"})
    elapsed = time.perf_counter() - t
    assert r.status_code == 422
    assert "pixels" in r.json()["error"]["message"]
    assert elapsed < 2.0  # decoding 200 MP (600 MB of RGB) would take far longer


def test_body_over_limit_is_refused_from_content_length(client: httpx.Client) -> None:
    r = client.post("/v1/detect", content=b"\xff" * (300 * 1024), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def test_chunked_body_over_limit_is_refused_while_streaming(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):  # 40 x 16 KiB = 640 KiB, no Content-Length
            yield b"\xff" * 16384

    r = client.post("/v1/detect", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def test_bad_deadline_header(client: httpx.Client) -> None:
    r = client.post("/v1/detect", content=jpeg_bytes(), headers={"content-type": "image/jpeg", "X-Deadline-S": "soon"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "bad_request"


def test_batch_limits_and_unknown_route(client: httpx.Client) -> None:
    assert client.post("/v1/detect/batch", json={"images": []}).status_code == 422
    assert client.post("/v1/detect/batch", content=b"x", headers={"content-type": "image/jpeg"}).status_code == 415
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


# -- streaming ---------------------------------------------------------------------------------------
def parse_sse(text: str) -> list[tuple[str, dict]]:
    import json

    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_stream_single_tier(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/detect/stream", content=jpeg_bytes(), headers={"content-type": "image/jpeg"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.read().decode())
    assert [e for e, _ in events] == ["tier", "decision"]
    tier, decision = events[0][1], events[1][1]
    assert tier["tier"] == 0 and tier["decided"] is True and tier["stages"] == ["clf"]
    assert tier["probability"] == pytest.approx(decision["probability"])


def test_stream_refuses_bad_input_before_streaming(client: httpx.Client) -> None:
    r = client.post("/v1/detect/stream", content=b"nope", headers={"content-type": "image/jpeg"})
    assert r.status_code == 422


# -- metrics -----------------------------------------------------------------------------------------
def test_metrics_are_exposed(client: httpx.Client, server: LiveServer) -> None:
    for _ in range(3):
        client.post("/v1/detect", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
    client.post("/v1/detect", content=b"junk", headers={"content-type": "image/jpeg"})
    text = server.metrics()
    assert metric_value(text, "workzone_requests_total", {"endpoint": "/v1/detect", "status": "200"}) >= 3
    assert metric_value(text, "workzone_requests_total", {"endpoint": "/v1/detect", "status": "422"}) >= 1
    assert metric_value(text, "workzone_request_latency_seconds_count", {"endpoint": "/v1/detect"}) >= 4
    assert metric_value(text, "workzone_stage_latency_seconds_count", {"stage": "clf"}) >= 3
    assert metric_value(text, "workzone_exits_total", {"tier": "fast", "reason": "last tier"}) >= 3
    assert metric_value(text, "workzone_batch_size_count") >= 1
    assert metric_value(text, "workzone_queue_depth") == 0
    assert metric_value(text, "workzone_ready") == 1
