"""``workzone train verifier-pack`` and ``verifier-loso``: the fine-tuned candidate verifier.

``verifier-pack`` (CPU) writes every crop the verifier learns from or scores into one file that travels to a
GPU machine; ``verifier-loso`` (GPU) fine-tunes the fold models and the full model from it. Then
``workzone train loso-scores --verifier-run`` reads the run (see :mod:`workzone_train.verifier_tune`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["pack", "loso", "matched_cache"]


def pack(
    data: Path = typer.Option(..., exists=True, file_okay=False, help="folder with roadwork-v1, roadwork-v2, objects-v1, "
                                                                      "objects-v2 (../shared/data)"),
    detections: Path = typer.Option(..., exists=True, dir_okay=False, help="oof_detections.json(.gz) of a detector "
                                                                           "LOSO run (the candidates)"),
    out: Path = typer.Option(..., help="crop pack to write (.npz)"),
    hand_labels: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                               help="candidates named by eye (lab/labels/candidate_labels.csv): "
                                                    "they label candidates nobody boxed"),
    context: Optional[float] = typer.Option(None, min=1.0, max=8.0, help="crop side over the box's longer side "
                                            "(default: the verifier's, 2.0)"),
) -> None:
    """Every candidate, real, look-alike and drawn crop of the verifier's table, with its fold, in one file."""
    from rich.console import Console
    from rich.progress import Progress

    from workzone_train.object_train import LOSO_FOLDS
    from workzone_train.oof_scores import read_fold_detections
    from workzone_train.scene_synth import OBJECT_CLASSES
    from workzone_train.verifier import build_crop_table
    from workzone_train.verifier_tune import write_crop_pack

    from workzone_train.hand_labels import read_hand_labels

    con = Console(stderr=True)
    items = build_crop_table(data, read_fold_detections(detections), OBJECT_CLASSES,
                             hand_labels=read_hand_labels(hand_labels) if hand_labels else None)
    with Progress(console=con) as bar:
        task = bar.add_task("cropping", total=len(items))
        counts = write_crop_pack(items, LOSO_FOLDS, out, progress=lambda n: bar.advance(task, n), context=context)
    con.print(f"{sum(counts.values())} crops of {len(items)} items -> {out} ({out.stat().st_size / 2**20:.1f} MiB): "
              + ", ".join(f"{k or 'unlabelled'} {v}" for k, v in counts.items()))


def matched_cache(
    pack: Path = typer.Option(..., exists=True, dir_okay=False, help="crop pack from `workzone train verifier-pack`"),
    cache: Path = typer.Option(..., exists=True, dir_okay=False, help="embedded-crop cache of `loso-scores "
                                                                      "--verifier-cache` (same crop table)"),
    out: Path = typer.Option(..., help="the cache with the matched copies added (.npz)"),
    seed: int = typer.Option(0, help="draw of the windows"),
) -> None:
    """The frozen verifier's crop cache plus a resolution-matched copy of every labelled crop (a CPU check of
    `verifier-loso --match-resolution`); score it with `loso-scores --verifier-cache OUT`."""
    from rich.console import Console
    from rich.progress import Progress

    from workzone.errors import DataError
    from workzone_train.verifier_tune import add_matched_copies, read_crop_pack

    con = Console(stderr=True)
    crops = read_crop_pack(pack)
    try:
        with Progress(console=con) as bar:
            task = bar.add_task("embedding matched copies", total=int(((crops["labels"] != "") & ~crops["scored"]).sum()))
            n = add_matched_copies(cache, crops, out, seed=seed, progress=lambda k: bar.advance(task, k))
    except DataError as exc:
        con.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    con.print(f"{n} matched copies added -> {out}")


def loso(ctx: typer.Context) -> None:
    """Fine-tune every fold's verifier and the full one (one process each, on the visible GPUs)."""
    from workzone_train.verifier_tune import run_verifier_loso

    run_verifier_loso(list(ctx.args))


# Options and --help belong to run_verifier_loso's own parser.
loso.context_settings = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
