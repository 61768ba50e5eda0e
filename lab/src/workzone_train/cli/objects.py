"""``workzone train objects-fold``, ``objects-loso``, ``objects-pack``, ``objects-oof``: the shipped ten-class object detector.

The options of the first three are parsed by :mod:`workzone_train.object_train` itself (``--help`` shows
them), so these commands hand every argument on unchanged.
"""

from __future__ import annotations

import typer

from pathlib import Path
from typing import Optional

__all__ = ["fold", "loso", "pack", "oof"]

# Options and --help belong to object_train's own parser, so typer must neither parse nor answer them.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def fold(ctx: typer.Context) -> None:
    """Train one leave-one-source-out fold (or `--fold full`: the shipped model) and write its held-out detections."""
    from workzone_train.object_train import run_fold

    run_fold(list(ctx.args))


def loso(ctx: typer.Context) -> None:
    """Every fold and the full model, one process each, spread over the visible GPUs."""
    from workzone_train.object_train import run_loso

    run_loso(list(ctx.args))


def pack(ctx: typer.Context) -> None:
    """Gather a LOSO run's per-fold files (weights, out-of-fold detections, logs) into a few files."""
    from workzone_train.object_train import pack as pack_run

    pack_run(list(ctx.args))


for _command in (fold, loso, pack):
    _command.context_settings = _PASS_THROUGH  # read by `workzone train` when it registers the entry point


def oof(
    data: Path = typer.Option(..., exists=True, file_okay=False, help="folder with roadwork-v1, roadwork-v2, objects-v2 "
                                                                     "(../shared/data)"),
    fold_states: Path = typer.Option(..., exists=True, dir_okay=False, help="fold_states.pt of an `objects-loso` run "
                                                                           "(after `objects-pack`)"),
    size: int = typer.Option(..., min=64, max=2048, help="detector input size (a multiple of 32), e.g. 224"),
    out: Path = typer.Option(..., help="packed detections to write (.json.gz), for `loso-scores --glance-detections`"),
    sidecar: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                           help="detector sidecar whose as-trained treatment and classes are kept "
                                                "(default: the shipped roadwork_objects.json)"),
    tiles: int = typer.Option(1, min=1, max=4, help="look at N x N overlapping windows of each image instead of "
                                                    "the whole (each with the as-trained treatment): N times the "
                                                    "detail per object"),
) -> None:
    """Re-score every fold's held-out images at another input size, through the runtime's detector path (CPU)."""
    import json

    from rich.progress import Progress

    from workzone_train.corpus import load_corpus
    from workzone_train.fold_detect import fold_detections_at
    from workzone_train.object_train import LOSO_FOLDS

    if sidecar is None:
        import workzone

        sidecar = Path(workzone.__file__).resolve().parent / "models" / "roadwork_objects.json"
    if size % 32:
        raise typer.BadParameter(f"{size} is not a multiple of 32", param_hint="--size")
    total = sum(1 for s in load_corpus(data) if any(s.source in srcs for srcs in LOSO_FOLDS.values()))
    with Progress() as bar:
        task = bar.add_task(f"detecting at {size} px" + (f" over {tiles}x{tiles} windows" if tiles > 1 else ""),
                            total=total)
        try:
            path = fold_detections_at(data, fold_states, size=size, out=out, folds=LOSO_FOLDS,
                                      sidecar=json.loads(sidecar.read_text(encoding="utf-8")), tiles=tiles,
                                      progress=lambda n: bar.update(task, completed=n))
        except KeyError as exc:  # a run of other folds: say which, not a traceback
            raise typer.BadParameter(str(exc.args[0]), param_hint="--fold-states") from exc
    typer.echo(f"{total} images -> {path}")
