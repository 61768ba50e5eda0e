"""One result row per image or video frame: the columns of a batch job's output.

Rows are flat and schema-stable (per-stage scores as a JSON object in one column), so chunk files,
the Parquet output and the JSON Lines output hold the same columns whatever the pipeline. A decided
row is read from the decision's public answer (:func:`workzone.answer.public_answer`), so a batch
output says what the server would (a failed stage's error type, not its message).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from workzone.answer import public_answer
from workzone.types import Decision

__all__ = ["COLUMNS", "decision_row", "error_row", "summarise_evidence", "arrow_schema"]

#: Output columns, in order.
COLUMNS = ("key", "path", "frame_index", "timestamp_s", "probability", "label", "exit_tier", "exit_tier_name",
           "reason", "stage_scores", "stage_errors", "evidence", "latency_ms", "error")


def _base(key: str, path: str, frame_index: int | None, timestamp_s: float | None) -> dict[str, Any]:
    return {"key": key, "path": path, "frame_index": frame_index, "timestamp_s": timestamp_s}


def decision_row(key: str, path: str, frame_index: int | None, timestamp_s: float | None,
                 decision: Decision) -> dict[str, Any]:
    """The row of a decided image or frame."""
    answer = public_answer(decision)
    stages = answer["stages"]
    scores = {s["stage"]: (None if s["probability"] is None else round(s["probability"], 6)) for s in stages}
    errors = {s["stage"]: s["error"] for s in stages if s["error"]}
    return {**_base(key, path, frame_index, timestamp_s),
            **{k: answer[k] for k in ("probability", "label", "exit_tier", "exit_tier_name", "reason")},
            "stage_scores": json.dumps(scores, sort_keys=True), "stage_errors": json.dumps(errors, sort_keys=True),
            "evidence": summarise_evidence(stages), "latency_ms": round(answer["latency_ms"], 3), "error": None}


def error_row(key: str, path: str, frame_index: int | None, timestamp_s: float | None, error: str) -> dict[str, Any]:
    """The row of an input that could not be decided (missing, corrupt, too large, ...)."""
    return {**_base(key, path, frame_index, timestamp_s),
            "probability": None, "label": None, "exit_tier": None, "exit_tier_name": None, "reason": None,
            "stage_scores": "{}", "stage_errors": "{}", "evidence": "", "latency_ms": None, "error": error}


def summarise_evidence(stages: Sequence[dict[str, Any]], max_items: int = 6) -> str:
    """One line of the strongest evidence: boxes by label (count, best score), matched sign text, notes.

    Args:
        stages: the ``stages`` of a public answer.
        max_items: most parts on the line.

    Examples:
        >>> summarise_evidence([])
        ''
    """
    parts: list[str] = []
    for rep in stages:
        ev = rep["evidence"]
        best: dict[str, tuple[int, float]] = {}
        for b in ev["boxes"]:
            n, s = best.get(b["label"], (0, 0.0))
            best[b["label"]] = (n + 1, max(s, b["score"]))
        parts += [f"{rep['stage']}: {label} x{n} (best {s:.2f})" for label, (n, s) in sorted(best.items())]
        parts += [f"{rep['stage']}: text '{t['text']}'" + (f" ~ {t['matched']}" if t["matched"] else "")
                  for t in ev["texts"] if t["matched"]]
    return "; ".join(parts[:max_items])


def arrow_schema():
    """The pyarrow schema of the output (pyarrow is imported here, not at module import)."""
    from workzone._optional import require

    pa = require("pyarrow", "batch", "Parquet output")
    return pa.schema([
        ("key", pa.string()), ("path", pa.string()), ("frame_index", pa.int64()), ("timestamp_s", pa.float64()),
        ("probability", pa.float64()), ("label", pa.bool_()), ("exit_tier", pa.int64()),
        ("exit_tier_name", pa.string()), ("reason", pa.string()), ("stage_scores", pa.string()),
        ("stage_errors", pa.string()), ("evidence", pa.string()), ("latency_ms", pa.float64()),
        ("error", pa.string()),
    ])
