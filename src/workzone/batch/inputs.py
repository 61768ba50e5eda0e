"""What a batch job runs over: folders, globs, manifests, file lists and videos, each with an identity.

Every input file becomes one :class:`WorkItem` whose ``file_id`` names *this version of this file*
(path + size + modification time, or path + content hash). Result rows are keyed by ``file_id`` and
the frame index, so a rerun recognises what is already done, and a file changed since is redone.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from workzone.errors import DataError
from workzone.io.sources import IMAGE_SUFFIXES

__all__ = ["VIDEO_SUFFIXES", "Identity", "WorkItem", "expand_inputs", "row_key"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}
_MANIFEST_SUFFIXES = {".csv", ".parquet"}
_LIST_SUFFIXES = {".txt", ".lst"}
Identity = Literal["stat", "content"]


@dataclass(frozen=True)
class WorkItem:
    """One input file of a batch job.

    Attributes:
        path: absolute path.
        kind: ``"image"`` or ``"video"`` (by suffix).
        file_id: identity of this version of the file (hex digest); a missing file gets one made
            from its path alone, so it is still one row.
    """

    path: Path
    kind: Literal["image", "video"]
    file_id: str


def row_key(file_id: str, frame_index: int | None) -> str:
    """Key of one result row: the file's identity plus the frame (``-`` for a still image).

    Examples:
        >>> row_key("ab12", None), row_key("ab12", 30)
        ('ab12:-', 'ab12:30')
    """
    return f"{file_id}:{'-' if frame_index is None else frame_index}"


def expand_inputs(inputs: Iterable[str | Path], *, glob_pattern: str | None = None,
                  identity: Identity = "stat") -> list[WorkItem]:
    """Expand the command line's inputs into work items, in order, each file once.

    Args:
        inputs: folders (searched recursively), glob patterns (``shots/**/*.jpg``), CSV or Parquet
            manifests with a ``path`` column, file lists (``.txt``/``.lst``, one path a line, ``#``
            comments), image files and video files. Relative paths in manifests and lists resolve
            against the manifest's folder.
        glob_pattern: keep only files of folders whose path relative to the folder matches it
            (``fnmatch``, e.g. ``*.jpg`` or ``day1/*``).
        identity: ``stat`` (path, size, mtime; free) or ``content`` (path + SHA-1 of the bytes;
            reads every file, survives copies that reset mtimes).

    Raises:
        DataError: a manifest lacks a ``path`` column, or a glob matches nothing.
    """
    paths: list[Path] = []
    for raw in inputs:
        paths.extend(_expand_one(Path(raw), glob_pattern))
    seen: set[Path] = set()
    items: list[WorkItem] = []
    for p in paths:
        p = Path(os.path.abspath(p))
        if p in seen:
            continue
        seen.add(p)
        kind: Literal["image", "video"] = "video" if p.suffix.lower() in VIDEO_SUFFIXES else "image"
        items.append(WorkItem(p, kind, _file_id(p, identity)))
    return items


def _expand_one(p: Path, glob_pattern: str | None) -> list[Path]:
    text = str(p)
    if p.is_dir():
        wanted = IMAGE_SUFFIXES | VIDEO_SUFFIXES
        found = sorted(q for q in p.rglob("*") if q.suffix.lower() in wanted and q.is_file())
        if glob_pattern:
            found = [q for q in found if fnmatch.fnmatch(q.relative_to(p).as_posix(), glob_pattern)]
        return found
    if not p.exists() and any(c in text for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if os.path.isfile(m))
        if not matches:
            raise DataError(f"the pattern {text!r} matches no file")
        return matches
    suffix = p.suffix.lower()
    if suffix in _MANIFEST_SUFFIXES and p.is_file():
        return _read_manifest_paths(p)
    if suffix in _LIST_SUFFIXES and p.is_file():
        lines = (ln.strip() for ln in p.read_text(encoding="utf-8").splitlines())
        return [_resolve(p.parent, ln) for ln in lines if ln and not ln.startswith("#")]
    return [p]  # an image or video file; a missing one becomes an error row, not the end of the job


def _read_manifest_paths(manifest: Path) -> list[Path]:
    if manifest.suffix.lower() == ".parquet":
        from workzone._optional import require

        pq = require("pyarrow.parquet", "batch", "Parquet manifests")
        table = pq.read_table(manifest)
        if "path" not in table.column_names:
            raise DataError(f"manifest {manifest}: no 'path' column (columns: {', '.join(table.column_names)})")
        values = [str(v) for v in table.column("path").to_pylist() if v]
    else:
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "path" not in (reader.fieldnames or []):
                raise DataError(f"manifest {manifest}: no 'path' column (header: {reader.fieldnames})")
            values = [rec["path"].strip() for rec in reader if (rec.get("path") or "").strip()]
    return [_resolve(manifest.parent, v) for v in values]


def _resolve(base: Path, text: str) -> Path:
    q = Path(text).expanduser()
    return q if q.is_absolute() else base / q


def _file_id(path: Path, identity: Identity) -> str:
    h = hashlib.sha1(str(path).encode("utf-8", "surrogateescape"))
    try:
        st = path.stat()
    except OSError:
        h.update(b"\0missing")
        return h.hexdigest()[:20]
    if identity == "content" and path.is_file():
        try:
            with path.open("rb") as fh:
                h.update(b"\0" + hashlib.file_digest(fh, "sha1").digest())
        except OSError:  # unreadable: the decode step reports it as this file's error row
            h.update(b"\0unreadable")
    else:
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]
