"""Where images come from: manifests, folders, explicit lists."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from workzone.errors import DataError

__all__ = ["ManifestRow", "read_manifest", "iter_image_paths", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class ManifestRow:
    """One labelled image of a manifest.

    Attributes:
        path: absolute path of the image.
        label: 1 road work, 0 none.
        source: the manifest's ``source`` column ("" when absent).
        split: the manifest's ``split`` column ("" when absent).
        extra: every other column, as text.
    """

    path: Path
    label: int
    source: str = ""
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def read_manifest(
    manifest: str | Path,
    *,
    splits: Iterable[str] | None = None,
    sources: Iterable[str] | None = None,
    check_files: bool = True,
) -> list[ManifestRow]:
    """Read a CSV manifest with columns ``path,label`` (+ any others).

    Paths are relative to the manifest's folder unless absolute.

    Args:
        manifest: the CSV file.
        splits: keep only rows whose ``split`` is one of these (None keeps all).
        sources: keep only rows whose ``source`` is one of these (None keeps all).
        check_files: raise when a listed image does not exist.

    Raises:
        DataError: the file is missing, lacks a column, or has a bad label or missing image.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist")
    keep_splits = set(splits) if splits is not None else None
    keep_sources = set(sources) if sources is not None else None
    rows: list[ManifestRow] = []
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        missing = {"path", "label"} - cols
        if missing:
            raise DataError(f"manifest {manifest}: missing column(s) {sorted(missing)}; it needs at least path,label")
        for lineno, rec in enumerate(reader, start=2):
            split = (rec.get("split") or "").strip()
            source = (rec.get("source") or "").strip()
            if keep_splits is not None and split not in keep_splits:
                continue
            if keep_sources is not None and source not in keep_sources:
                continue
            raw_label = (rec.get("label") or "").strip().lower()
            if raw_label in ("1", "true", "roadwork", "yes"):
                label = 1
            elif raw_label in ("0", "false", "none", "no"):
                label = 0
            else:
                raise DataError(f"{manifest}:{lineno}: label must be 0 or 1, got {rec.get('label')!r}")
            p = Path(rec["path"])
            if not p.is_absolute():
                p = manifest.parent / p
            if check_files and not p.is_file():
                raise DataError(f"{manifest}:{lineno}: image {p} does not exist")
            extra = {k: v for k, v in rec.items() if k not in ("path", "label", "split", "source") and k}
            rows.append(ManifestRow(path=p, label=label, source=source, split=split, extra=extra))
    if not rows:
        raise DataError(f"manifest {manifest}: no rows left after filtering (splits={keep_splits}, sources={keep_sources})")
    return rows


def iter_image_paths(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files and folders (recursively, sorted) into image paths."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        else:
            yield p
