"""A real browser for tests: Playwright for Python driving the system's Chromium (Debian's ``chromium``).

Playwright's own browser download cannot be fetched on these machines, so the tests launch the
installed executable (``WORKZONE_CHROMIUM`` or ``chromium`` on PATH). Without it the browser tests
skip, naming what to install; in CI (``CI`` set) they fail instead, so a missing install step shows.
Screenshots go to ``test-artifacts/`` (or ``WORKZONE_TEST_ARTIFACTS``).

Import the fixtures into a test module: ``from tests.browser import browser_page, artifacts  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import REPO

INSTALL = ("install it with `apt-get install -y chromium` and `pip install -e '.[dev]'` (the playwright package; "
           "no `playwright install` needed)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"browser tests must run in CI: {reason}; {INSTALL}")
    pytest.skip(f"{reason}; {INSTALL}")


def chromium_path() -> str | None:
    explicit = os.environ.get("WORKZONE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def _browser() -> Iterator[Any]:
    # Per test, not per session: while Playwright's sync API is running, asyncio.run() in the main thread
    # fails ("cannot be called from a running event loop"), which would break later tests of the suite.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    exe = chromium_path()
    if exe is None:
        _unavailable("no chromium executable found")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class PageWithConsole:
    """A page plus every console error, uncaught exception and failed request it produced."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}"))


@pytest.fixture
def browser_page(_browser: Any) -> Iterator[PageWithConsole]:
    context = _browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield PageWithConsole(context.new_page())
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("WORKZONE_TEST_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
