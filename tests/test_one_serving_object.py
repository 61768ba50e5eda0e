"""Server, miner, batch jobs and the sync API decode through one object: the detection service's decoder.

Each front end is driven through its own entry (the server's request loader, the miner's challenge
answer, a local batch job, ``Pipeline.predict``) over one service whose decoder records who called it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image as PILImage

import tests.stages_fixtures  # noqa: F401 - registers test_redness
from workzone.api import Pipeline
from workzone.config.loader import parse_pipeline
from workzone.service import DetectionService, ImageDecoder
from workzone.types import Image

PIPELINE = """
name: one-path
tiers:
  - name: only
    stages: [{name: red, kind: test_redness}]
"""


class RecordingDecoder(ImageDecoder):
    """The CPU decode policy, recording every input it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def decode(self, items: Sequence[Any], sources: Sequence[str | None] | None = None) -> list[Image]:
        self.seen += [type(x).__name__ for x in items]
        return super().decode(items, sources)


def _jpeg(path: Path | None = None) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.full((32, 48, 3), (200, 30, 30), np.uint8)).save(buf, "JPEG")
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_every_front_end_decodes_through_the_service_decoder(tmp_path: Path) -> None:
    pytest.importorskip("pydantic_settings")
    from workzone.batch.inputs import expand_inputs
    from workzone.batch.local import run_local
    from workzone.batch.store import ResultStore
    from workzone.miner.service import MinerService
    from workzone.miner.settings import MinerSettings
    from workzone.server.inputs import RawImage, image_bytes
    from workzone.server.settings import ServerSettings

    decoder = RecordingDecoder()
    service = DetectionService.from_config(parse_pipeline(PIPELINE), tmp_path, decoder=decoder)
    with Pipeline(service=service) as pipe:
        assert pipe.service is service
        # the sync API
        assert pipe.predict(_jpeg()).probability > 0.5
        assert decoder.seen == ["bytes"]
        # a local batch job
        _jpeg(tmp_path / "a.jpg")
        store = ResultStore([tmp_path / "out.jsonl"], {"pipeline": "one-path"})
        store.open()
        items = expand_inputs([tmp_path / "a.jpg"])
        run_local(pipe, items, store, batch_size=2, decode_workers=1, fps=None)
        rows = store.finalize({it.file_id for it in items})
        assert [r["error"] for r in rows] == [None] and rows[0]["probability"] > 0.5
        assert decoder.seen[1:] == ["PosixPath"]

        async def server_and_miner() -> tuple[Image, float]:
            raw = RawImage(data=_jpeg(), b64=None, url=None, source="upload")
            # what the server's routes do: the bytes of the input, its header, then the decode
            data = await image_bytes(raw, ServerSettings())
            await service.probe(data, raw.source)
            image = await service.decode(data, raw.source)
            miner = MinerService(service, MinerSettings(), metagraph=lambda: None)
            answer = await miner.answer(base64.b64encode(_jpeg()).decode("ascii"))
            assert answer.source == "cascade", answer.error
            return image, answer.prediction

        # the server's and the miner's paths, on the loop the service lives on
        image, p = pipe._loop.run(server_and_miner())
        assert image.width == 48 and p > 0.5
        assert decoder.seen[2:] == ["bytes", "bytes"]
