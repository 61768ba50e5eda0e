"""The report's gallery: the worst misses and false alarms, with their evidence drawn on the image.

Each card is an inline SVG: the image as a small base64 JPEG, every stage's boxes on top (tile
scores as a translucent heat map, detector boxes as outlines, sign text with what it read), then
the per-tier and per-stage probabilities. Thumbnails keep the report small (a dev-split report is
well under a megabyte of images).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

from workzone.evaluation.records import resolve_image_path
from workzone.io.images import DEFAULT_LIMITS

__all__ = ["pick_worst", "evidence_card", "STAGE_COLOURS"]

STAGE_COLOURS = ("#f76707", "#1c7ed6", "#37b24d", "#ae3ec9", "#f59f00", "#0ca678", "#e03131", "#3b5bdb")
_TILE = "roadwork-tile"


def pick_worst(records: Sequence[dict[str, Any]], k: int) -> tuple[list[dict], list[dict]]:
    """The ``k`` road-work images with the lowest probability among those called "none" (misses), and the
    ``k`` images without road work with the highest probability among those called road work (false alarms)."""
    scored = [r for r in records if r.get("probability") is not None and r.get("truth") is not None]
    misses = sorted((r for r in scored if r["truth"] == 1 and r["probability"] <= 0.5), key=lambda r: r["probability"])
    alarms = sorted((r for r in scored if r["truth"] == 0 and r["probability"] > 0.5), key=lambda r: -r["probability"])
    return misses[:k], alarms[:k]


def _thumbnail(path: Path, max_side: int) -> tuple[str, int, int, int, int]:
    """(base64 JPEG, thumb width, thumb height, full width, full height) of the image at ``path``."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        full = im.size
        im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=78)
    return base64.b64encode(buf.getvalue()).decode(), im.width, im.height, full[0], full[1]


def _decoded_size(rec: dict[str, Any], full: tuple[int, int]) -> tuple[float, float]:
    # Evidence is in pixels of the image as the cascade decoded it (downscaled past max_side).
    if rec.get("image_size"):
        return float(rec["image_size"][0]), float(rec["image_size"][1])
    w, h = full
    scale = min(1.0, DEFAULT_LIMITS.max_side / max(w, h)) if DEFAULT_LIMITS.max_side else 1.0
    return w * scale, h * scale


def _overlays(rec: dict[str, Any], sx: float, sy: float) -> list[str]:
    parts: list[str] = []
    for k, stage in enumerate(rec.get("stages", [])):
        colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
        ev = stage.get("evidence", {})
        for b in ev.get("boxes", []):
            x, y = b["x1"] * sx, b["y1"] * sy
            w, h = (b["x2"] - b["x1"]) * sx, (b["y2"] - b["y1"]) * sy
            if b["label"] == _TILE:
                parts.append(f'<rect class="heat" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                             f'fill="#ff0000" fill-opacity="{0.4 * b["score"]:.2f}" stroke="none"/>')
                continue
            tip = html.escape(f"{stage['stage']}: {b['label']} {b['score']:.2f}")
            parts.append(f'<rect class="box" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" '
                         f'stroke="{colour}" stroke-width="2"><title>{tip}</title></rect>'
                         f'<text x="{x + 2:.1f}" y="{max(10.0, y - 2):.1f}" fill="{colour}" font-size="10" '
                         f'paint-order="stroke" stroke="white" stroke-width="2">{html.escape(b["label"])} '
                         f'{b["score"]:.2f}</text>')
        for t in ev.get("texts", []):
            if not t.get("box"):
                continue
            x1, y1, x2, y2 = t["box"]
            parts.append(f'<rect class="text-box" x="{x1 * sx:.1f}" y="{y1 * sy:.1f}" width="{(x2 - x1) * sx:.1f}" '
                         f'height="{(y2 - y1) * sy:.1f}" fill="none" stroke="{colour}" stroke-dasharray="3 2"/>'
                         f'<text x="{x1 * sx:.1f}" y="{y2 * sy + 11:.1f}" fill="{colour}" font-size="10" '
                         f'paint-order="stroke" stroke="white" stroke-width="2">“{html.escape(t["text"])}”</text>')
    return parts


def _fmt_p(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}"


def evidence_card(rec: dict[str, Any], base: Path, max_side: int = 528) -> str:
    """One gallery card (HTML) for a prediction record; the image is read from ``base / rec['path']``."""
    path = resolve_image_path(rec["path"], base)
    caption = (f'<b>{html.escape(str(rec["path"]))}</b><br>source {html.escape(str(rec.get("source") or "-"))}, '
               f'truth {"road work" if rec.get("truth") else "none"}, P(road work) <b>{_fmt_p(rec["probability"])}</b>, '
               f'left after tier {html.escape(str(rec.get("exit_tier_name") or rec.get("exit_tier")))} '
               f'({html.escape(str(rec.get("reason") or ""))})')
    try:
        b64, tw, th, fw, fh = _thumbnail(path, max_side)
    except OSError as exc:
        figure = f'<div class="missing">image not readable here: {html.escape(str(exc))}</div>'
    else:
        dw, dh = _decoded_size(rec, (fw, fh))
        body = "".join(_overlays(rec, tw / dw, th / dh))
        figure = (f'<svg class="evidence" viewBox="0 0 {tw} {th}" width="{tw}" height="{th}" role="img" '
                  f'aria-label="{html.escape(str(rec["path"]))} with evidence">'
                  f'<image href="data:image/jpeg;base64,{b64}" width="{tw}" height="{th}"/>{body}</svg>')
    tiers = " → ".join(_fmt_p(p) for p in rec.get("tier_probabilities", [])) or "—"
    rows = []
    for k, s in enumerate(rec.get("stages", [])):
        ev = s.get("evidence", {})
        said = [f'“{t["text"]}”' + (f' ~ {t["matched"]}' if t.get("matched") else "") for t in ev.get("texts", [])[:3]]
        said += list(ev.get("notes", [])[:2])
        if s.get("error"):
            said = [f"failed: {s['error']}"]
        rows.append(f'<tr><td><span class="swatch" style="background:{STAGE_COLOURS[k % len(STAGE_COLOURS)]}"></span>'
                    f'{html.escape(s["stage"])}</td><td>{s.get("tier", "")}</td><td>{_fmt_p(s.get("probability"))}</td>'
                    f'<td>{len(ev.get("boxes", []))}</td><td>{html.escape("; ".join(said))}</td></tr>')
    table = ('<table class="stages"><tr><th>stage</th><th>tier</th><th>P</th><th>boxes</th><th>evidence</th></tr>'
             + "".join(rows) + "</table>")
    return (f'<figure class="card">{figure}<figcaption>{caption}<br>fused P after each tier: {tiers}'
            f'{table}</figcaption></figure>')
