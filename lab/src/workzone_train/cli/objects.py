"""``workzone train objects-fold``, ``objects-loso``, ``objects-pack``: the shipped ten-class object detector.

The options are parsed by :mod:`workzone_train.object_train` itself (``--help`` shows them), so these
commands hand every argument on unchanged.
"""

from __future__ import annotations

import typer

__all__ = ["fold", "loso", "pack"]

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
