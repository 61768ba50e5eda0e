"""Acceptance: ``--engine ray`` on a real local Ray instance (2 CPUs) gives the single-process rows."""

from __future__ import annotations

import io
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
    # Default flags on 2 CPUs: the pool is sized from the CPUs (one actor beside decoding), where a
    # fixed pool of two actors held both CPUs and the decode tasks never ran.
    progress = io.StringIO()
    on_ray = run_batch_job(inputs, [tmp_path / "ray.parquet"], options=BatchOptions(engine="ray", ray_cpus=2, **opts),
                           progress_stream=progress)

    assert (on_ray.rows, on_ray.new_rows, on_ray.errors) == (local.rows, local.new_rows, local.errors) == (6 + 2 + 4, 12, 2)
    ray_rows = read_results(tmp_path / "ray.parquet")
    assert [comparable(r) for r in ray_rows] == [comparable(r) for r in read_results(tmp_path / "local.parquet")]
    assert list((tmp_path / "ray.parquet.parts").glob("ray-*/*.parquet"))  # written by the Ray Data sink
    assert [r["frame_index"] for r in ray_rows if r["path"].endswith("clip.mp4")] == [0, 5, 10, 15]
    assert "9/9 files, 12 rows (2 errors)" in progress.getvalue().splitlines()[-1]


@pytest.mark.parametrize(("cpus", "requested", "gpus", "per_actor", "expected"), [
    (2, None, 0, 0, 1), (4, None, 0, 0, 3), (4, 3, 0, 0, 3), (32, None, 0, 0, 31),
    (8, None, 2, 1.0, 2), (8, None, 2, 0.5, 4),
    (2, 2, 0, 0, "--ray-workers 2: Ray has 2 CPU.*--ray-workers 1"),
    (1, None, 0, 0, "1 CPU.*cannot hold one cascade actor.*--ray-cpus"),
    (8, 3, 2, 1.0, "--ray-workers 3: Ray has 8 CPU.*2 GPU.*--ray-workers 2"),
])
def test_the_actor_pool_is_sized_from_the_resources(cpus, requested, gpus, per_actor, expected) -> None:
    from workzone.batch.ray_engine import size_actor_pool
    from workzone.errors import ConfigError

    if isinstance(expected, int):
        assert size_actor_pool(cpus, requested, gpus=gpus, gpus_per_actor=per_actor) == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            size_actor_pool(cpus, requested, gpus=gpus, gpus_per_actor=per_actor)


def test_a_pool_that_cannot_be_scheduled_is_refused_before_ray_starts(tmp_path: Path) -> None:
    import ray

    from workzone.errors import ConfigError

    make_image_folder(tmp_path / "shots", 2)
    with pytest.raises(ConfigError, match=r"--ray-workers 2: Ray has 2 CPU\(s\).*wait forever.*--ray-workers 1"):
        run_batch_job([str(tmp_path / "shots")], [tmp_path / "ray.parquet"],
                      options=BatchOptions(engine="ray", ray_cpus=2, ray_workers=2))
    assert not ray.is_initialized()
