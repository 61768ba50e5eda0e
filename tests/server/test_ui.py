"""The web page at ``/`` of a real ``workzone serve`` on loopback, driven in Chromium.

Screenshots land in ``test-artifacts/`` (see tests/browser.py).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from tests.browser import _browser, artifacts, browser_page  # noqa: F401 - fixtures
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "roadwork_cambridge_drawn.jpg"

# The shipped models, with tier 1 never exiting: the page must show tier 2's boxes and tile heat map.
UI_PIPELINE = """\
name: ui-test
deadline_s: 60
tiers:
- name: fast
  stages:
  - {name: classifier, kind: onnx_classifier, model: builtin:roadwork_lite0.onnx}
  fusion: {bias: -0.31, weights: {classifier: 2.09}, fitted: true}
- name: closer-look
  stages:
  - {name: tiles, kind: onnx_classifier, model: builtin:roadwork_lite0.onnx, tiles: 2}
  - {name: cones, kind: roadwork_detector, model: builtin:cone_detector.onnx}
  - {name: signs, kind: sign_ocr}
  fusion: {bias: -0.95, weights: {classifier: 0.9, tiles: 0.5, cones: 1.0, signs: 0.2}, fitted: true}
"""


@pytest.fixture(scope="module")
def ui_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui") / "ui.yaml"
    path.write_text(UI_PIPELINE)
    return path


def _wait_done(page, timeout_ms: int = 90_000):
    page.wait_for_selector("article.result[data-state=done], article.result[data-state=error]", timeout=timeout_ms)
    return page.locator("article.result").first


def test_static_files_ship_with_the_package_and_the_page_is_locked_down(live_server, model_dir):
    from workzone.server.ui import STATIC_DIR

    assert {p.name for p in STATIC_DIR.iterdir()} >= {"index.html", "app.js", "style.css"}
    srv = live_server(pipeline=str(_tiny_pipeline(model_dir)), api_keys=("secret-key-1",))
    page = httpx.get(srv.url + "/", timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text)  # nothing fetched from elsewhere
    cfg = httpx.get(srv.url + "/ui/config.json", timeout=5).json()
    assert cfg["auth_required"] is True and "secret-key-1" not in str(cfg)
    assert httpx.get(srv.url + "/ui/static/app.js", timeout=5).status_code == 200
    assert httpx.get(srv.url + "/v1/pipeline", timeout=5).status_code == 401  # the API still wants the key


def test_page_shows_tiers_decision_and_evidence_of_a_sample(live_server, ui_pipeline, browser_page, artifacts):
    srv = live_server(pipeline=str(ui_pipeline))
    page = browser_page.page
    page.goto(srv.url + "/")
    page.wait_for_selector("#service-status.ok")
    assert "ui-test" in page.inner_text("#pipeline")
    page.set_input_files("#files", str(SAMPLE))
    card = _wait_done(page)
    assert card.get_attribute("data-state") == "done", card.inner_text()
    verdict = card.locator(".verdict").inner_text()
    assert "ROAD WORK" in verdict and "P(road work) 0.9" in verdict
    # the pipeline's costs are declared, not timed, and say so
    assert "declared cost" in verdict and "not a measured time" in verdict
    assert "1: fast" in page.inner_text("#pipeline")  # tiers count from 1, as in eval, tune and the CLI
    tiers = card.locator(".tiers li")
    assert tiers.count() == 2  # both tier events arrived from the stream
    assert tiers.nth(0).inner_text().startswith("tier 1 ")
    assert "closer-look" in tiers.nth(1).inner_text() and "decided" in tiers.nth(1).inner_text()
    assert tiers.nth(1).inner_text().startswith("tier 2 ")
    assert card.locator("tbody tr").count() == 4  # one row per stage, with its score and cost
    assert card.locator("tbody tr").first.locator("td").nth(2).inner_text() == "1"
    assert card.locator(".overlay rect.box").count() >= 1  # the cone detector's boxes
    assert card.locator(".overlay rect.heat").count() >= 1  # the tile that lit up
    box = card.locator(".overlay rect.box").first.bounding_box()
    photo = card.locator(".photo").bounding_box()
    assert box and photo and photo["x"] <= box["x"] <= photo["x"] + photo["width"]  # drawn on the image
    page.screenshot(path=str(artifacts / "ui_decision.png"), full_page=True)
    assert browser_page.errors == []


def _tiny_pipeline(model_dir: Path) -> Path:
    from server_support import write_pipeline

    return write_pipeline(model_dir, "ui-tiny")


def test_wrong_api_key_is_explained_and_the_right_one_works(live_server, model_dir, browser_page, artifacts):
    srv = live_server(pipeline=str(_tiny_pipeline(model_dir)), api_keys=("right-key-123",))
    page = browser_page.page
    page.goto(srv.url + "/")
    page.wait_for_selector("#service-status.bad")
    assert "enter the API key" in page.inner_text("#service-status")
    page.fill("#api-key", "wrong-key-456")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#page-error:not([hidden])")
    assert "API key is missing or wrong" in page.inner_text("#page-error")
    page.set_input_files("#files", str(SAMPLE))
    card = _wait_done(page)
    assert card.get_attribute("data-state") == "error"
    assert "API key is missing or wrong" in card.locator(".message").inner_text()
    page.screenshot(path=str(artifacts / "ui_wrong_key.png"), full_page=True)
    page.fill("#api-key", "right-key-123")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#service-status.ok")
    assert page.evaluate("localStorage.getItem('workzone.apiKey')") == "right-key-123"  # kept for the next visit
    page.set_input_files("#files", str(SAMPLE))
    page.wait_for_selector("article.result[data-state=done]")


def _noise_jpeg(side: int) -> bytes:
    px = np.random.default_rng(0).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(px).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("name, mime, make, expected", [
    ("notes.txt", "text/plain", lambda: b"not a picture", "is not an image (text/plain)"),
    ("fake.jpg", "image/jpeg", lambda: b"this is text pretending to be a JPEG", "is not an image the service can read"),
    ("huge.jpg", "image/jpeg", lambda: _noise_jpeg(400), "this service accepts at most 32 KB"),
])
def test_bad_uploads_get_a_clear_message(live_server, model_dir, browser_page, artifacts, name, mime, make, expected):
    srv = live_server(pipeline=str(_tiny_pipeline(model_dir)), max_body_bytes=32 * 1024)
    page = browser_page.page
    page.goto(srv.url + "/")
    page.wait_for_selector("#service-status.ok")
    page.set_input_files("#files", files=[{"name": name, "mimeType": mime, "buffer": make()}])
    card = _wait_done(page, 30_000)
    assert card.get_attribute("data-state") == "error"
    message = card.locator(".message").inner_text()
    assert expected in message and name in message
    page.screenshot(path=str(artifacts / f"ui_bad_upload_{Path(name).stem}.png"), full_page=True)
