"""``workzone train anomaly-bank``: the files of the ``patch_anomaly`` stage, from a manifest's negatives."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def build_anomaly_bank(
    manifest: Path = typer.Argument(..., help="CSV with path,label[,split,source]"),
    out: Path = typer.Option(..., "--out", help="folder for anomaly_features.onnx and anomaly_bank.npz"),
    split: Optional[List[str]] = typer.Option(None, "--split", help="splits to use (repeatable; default: all)"),
    size: int = typer.Option(224, help="input side in pixels"),
    bank: int = typer.Option(2048, help="bank rows kept by the coreset"),
    limit: int = typer.Option(0, help="use at most this many negatives (0: all)"),
) -> None:
    """Build a patch-feature memory bank of ordinary roads (label 0 rows only)."""
    from rich.console import Console

    from workzone.errors import WorkzoneError
    from workzone_train.anomaly_bank import build_bank
    from workzone_train.data import load_pixels, load_samples

    console = Console(stderr=True)
    try:
        negatives = [s for s in load_samples(manifest, splits=split) if s.label == 0]
        if limit:
            negatives = negatives[:limit]
        if not negatives:
            raise typer.BadParameter(f"{manifest} has no label-0 rows in splits {split or 'all'}")
        pixels = [load_pixels(s.path) for s in negatives]
        onnx_path, bank_path = build_bank(pixels, out, size=size, bank_size=bank,
                                          info={"built_from": f"{manifest} splits={split or 'all'} label=0"})
    except WorkzoneError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"{len(negatives)} negatives -> {onnx_path} and {bank_path}")
