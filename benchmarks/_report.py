"""Hand a benchmark's Markdown to the reader: printed, and written where ``--out`` says."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def publish(lines: Sequence[str], out: Path | None) -> None:
    """Print ``lines`` as one Markdown document and write it to ``out`` when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text, encoding="utf-8")
