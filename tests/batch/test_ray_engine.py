"""Acceptance: ``--engine ray`` on a real local Ray instance (2 CPUs) gives the single-process rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.batch._support import comparable, make_image_folder
from tests.video._clips import write_counter_video
from workzone.batch import BatchOptions, read_results, run_batch_job

pytest.importorskip("ray")
pytest.importorskip("pyarrow")
pytest.importorskip("av")


def test_ray_engine_matches_the_local_engine(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "shots", 6)
    (tmp_path / "shots" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_counter_video(tmp_path / "shots" / "clip.mp4", 20, 10, size=(160, 120))
    (tmp_path / "list.txt").write_text("shots/missing.jpg\n")
    inputs = [str(tmp_path / "shots"), str(tmp_path / "list.txt")]
    opts = dict(batch_size=4, fps=2.0)

    local = run_batch_job(inputs, [tmp_path / "local.parquet"], options=BatchOptions(**opts))
    on_ray = run_batch_job(inputs, [tmp_path / "ray.parquet"],
                           options=BatchOptions(engine="ray", ray_cpus=2, ray_workers=1, **opts))

    assert (on_ray.rows, on_ray.new_rows, on_ray.errors) == (local.rows, local.new_rows, local.errors) == (6 + 2 + 4, 12, 2)
    ray_rows = read_results(tmp_path / "ray.parquet")
    assert [comparable(r) for r in ray_rows] == [comparable(r) for r in read_results(tmp_path / "local.parquet")]
    assert list((tmp_path / "ray.parquet.parts").glob("ray-*/*.parquet"))  # written by the Ray Data sink
    assert [r["frame_index"] for r in ray_rows if r["path"].endswith("clip.mp4")] == [0, 5, 10, 15]
