"""Per-image prediction records: what ``workzone eval --predictions`` writes and ``workzone report`` reads.

One record per image, as one JSON object per line (JSON Lines)::

    {"path": "images/a.jpg", "truth": 1, "source": "TraCon", "split": "dev", "condition": "daylight",
     "probability": 0.97, "label": true, "exit_tier": 0, "exit_tier_name": "fast", "reason": "confident",
     "tier_probabilities": [0.97], "latency_ms": 7.1, "cost": 6.2, "image_size": [960, 720],
     "stages": [{"stage": "classifier", "kind": "onnx_classifier", "tier": 0, "probability": 0.97,
                 "latency_ms": 6.9, "error": null, "evidence": {"boxes": [], "texts": [], "notes": []}}],
     "error": null}

The decision's fields are its public answer (:func:`workzone.answer.public_answer`, ``source`` left out:
the path says it). ``truth`` is the ground-truth label (absent when unknown); ``label`` is the decision. Rows written by
other tools are accepted when they carry at least a path and a probability: a ``workzone detect
--json`` line (``source`` is the path), or a ``workzone batch`` row (per-stage scores as a
``stages`` list or a ``stage_scores`` mapping of stage name to probability). Ground truth missing
from the rows is joined from a manifest by path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from workzone.answer import public_answer
from workzone.errors import DataError
from workzone.io.atomic import atomic_path

if TYPE_CHECKING:
    from workzone.evaluation.runner import EvalResult
    from workzone.io.sources import ManifestRow

__all__ = ["records_from_eval", "write_records", "read_records", "normalise_record", "join_truth",
           "condition_of", "resolve_image_path"]

_LOW_LIGHT_WORDS = ("night", "dusk", "dark", "low light")


def condition_of(extra: dict[str, str]) -> str | None:
    """The capture condition of a manifest row: its ``condition`` column, else the light named in its
    ``notes`` ("low light" for night or dusk, else "daylight"); None when the row has neither column."""
    if extra.get("condition"):
        return extra["condition"]
    if "notes" not in extra:
        return None
    notes = extra["notes"].lower()
    return "low light" if any(w in notes for w in _LOW_LIGHT_WORDS) else "daylight"


def records_from_eval(result: "EvalResult", base: Path | None = None) -> list[dict[str, Any]]:
    """One record per manifest row of an evaluation run (undecodable images get ``error``).

    Args:
        result: the run.
        base: paths are written relative to this folder when they lie under it (the manifest's).
    """
    out = []
    for i, row in enumerate(result.rows):
        path = row.path.resolve()
        if base is not None:
            try:
                path = path.relative_to(base.resolve())
            except ValueError:
                pass
        rec: dict[str, Any] = {"path": str(path), "truth": int(row.label), "source": row.source, "split": row.split,
                               "condition": condition_of(row.extra)}
        d = result.decisions[i]
        if d is None:
            rec.update(probability=None, error=result.failures.get(i, "not decided"), stages=[])
        else:
            dd = public_answer(d)
            dd.pop("source", None)
            rec.update(dd)
            rec["error"] = None
            size = result.sizes[i] if result.sizes else None
            rec["image_size"] = list(size) if size else None
        out.append(rec)
    return out


def write_records(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write records as JSON Lines, atomically (a killed run leaves no partial file); returns how many."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
            n += 1
    return n


def _stages_from_scores(scores: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stage": name, "kind": "", "tier": -1, "probability": None if v is None else float(v),
             "latency_ms": None, "error": None, "evidence": {"boxes": [], "texts": [], "notes": []}}
            for name, v in scores.items()]


def normalise_record(raw: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A record in the canonical shape above, from any accepted row shape.

    Raises:
        DataError: the row has no path, or a probability that is not a number in [0, 1].
    """
    path = raw.get("path") or raw.get("source")
    if not path:
        raise DataError(f"{where}: a prediction row needs 'path' (or 'source'); got keys {sorted(raw)}")
    rec = dict(raw)
    rec["path"] = str(path)
    if raw.get("truth") is None:
        for key in ("true_label", "label_true", "ground_truth"):
            if raw.get(key) is not None:
                rec["truth"] = int(raw[key])
    prob = raw.get("probability")
    if prob is not None:
        if not isinstance(prob, (int, float)) or not math.isfinite(prob) or not 0 <= prob <= 1:
            raise DataError(f"{where}: probability must be a number in [0, 1], got {prob!r}")
        rec["probability"] = float(prob)
    if not isinstance(raw.get("stages"), list):
        scores = raw.get("stage_scores") or raw.get("scores") or {}
        rec["stages"] = _stages_from_scores(scores) if isinstance(scores, dict) else []
    for s in rec["stages"]:
        s.setdefault("evidence", {})
        for key in ("boxes", "texts", "notes"):
            s["evidence"].setdefault(key, [])
    if isinstance(rec.get("exit_tier"), str):  # a batch row may name the tier instead of numbering it
        rec["exit_tier_name"], rec["exit_tier"] = rec["exit_tier"], None
    rec.setdefault("tier_probabilities", [])
    rec.setdefault("error", None)
    return rec


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read prediction records from a JSON Lines file (blank lines skipped).

    Raises:
        DataError: the file is missing, a line is not JSON, or a row lacks a path.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prediction file {p} does not exist; write one with `workzone eval MANIFEST "
                        "--predictions FILE.jsonl` or `workzone batch`")
    out = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n}: not a JSON object ({exc.msg})") from exc
            if not isinstance(raw, dict):
                raise DataError(f"{p}:{n}: expected a JSON object per line, got {type(raw).__name__}")
            out.append(normalise_record(raw, f"{p}:{n}"))
    if not out:
        raise DataError(f"{p} holds no prediction rows")
    return out


def resolve_image_path(path: str, base: Path) -> Path:
    """Where a record's image is: an absolute path as is, else under ``base`` (the manifest's or the records'
    folder), else relative to the working directory (rows written by a tool run from there)."""
    p = Path(path)
    if p.is_absolute():
        return p
    under = base / p
    return under if under.exists() or not p.exists() else p.resolve()


def join_truth(records: Sequence[dict[str, Any]], rows: Sequence["ManifestRow"], base: Path) -> int:
    """Fill ``truth``, ``source``, ``split`` and ``condition`` of records from manifest rows with the same
    path (absolute, or relative to ``base``); returns how many records matched."""
    by_path: dict[str, ManifestRow] = {}
    for r in rows:
        by_path[str(r.path.resolve())] = r
    matched = 0
    for rec in records:
        row = by_path.get(str(resolve_image_path(rec["path"], base).resolve()))
        if row is None:
            continue
        matched += 1
        rec["truth"] = int(row.label)
        rec.setdefault("source", row.source)
        rec["source"] = rec["source"] or row.source
        rec.setdefault("split", row.split)
        rec["condition"] = rec.get("condition") or condition_of(row.extra)
    return matched
