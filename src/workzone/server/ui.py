"""The web page of ``workzone serve``: ``GET /`` and its static files, shipped in the package.

The page (plain HTML, CSS and JavaScript; no build step, nothing fetched from elsewhere) posts each
chosen image to ``/v1/detect/stream`` and shows the tiers as they arrive. It learns the limits it
checks before uploading, and whether a key is needed, from ``GET /ui/config.json``; the API itself
still enforces both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["attach_ui", "STATIC_DIR"]

STATIC_DIR = Path(__file__).with_name("static")

# The page loads only its own files; images are shown from blob: URLs of the files the user chose.
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})


@router.get("/ui/config.json")
async def ui_config(request: Request) -> dict[str, Any]:
    """What the page needs to know before uploading (no secrets: whether a key is needed, not the keys)."""
    s = request.app.state.settings
    return {"auth_required": bool(s.api_keys), "max_body_bytes": s.max_body_bytes,
            "max_image_pixels": s.max_image_pixels, "max_image_side": s.max_image_side,
            "stream_endpoint": "/v1/detect/stream", "pipeline_endpoint": "/v1/pipeline"}


def attach_ui(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/ui/static``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
