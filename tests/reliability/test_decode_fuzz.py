"""Property-based fuzzing of decoding: any mutation of any seed, any array a caller might pass, is
decoded into valid pixels or refused with InvalidImageError; nothing else escapes.

CI runs a few hundred examples; ``benchmarks/reliability.py`` runs tens of thousands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.corpus import load_seeds, make_seeds
from tests.reliability.fuzz import mutated_images, odd_arrays
from workzone.api import load_pipeline
from workzone.errors import InvalidImageError
from workzone.io.images import DEFAULT_LIMITS, decode_image

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check(img) -> None:
    px = img.pixels
    assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
    assert min(px.shape[:2]) >= 1 and max(px.shape[:2]) <= DEFAULT_LIMITS.max_side


def test_committed_seeds_are_the_generated_ones_and_all_decode():
    assert load_seeds().keys() == make_seeds().keys()
    for name, data in load_seeds().items():
        _check(decode_image(data, source=name))


@FUZZ
@given(mutated_images())
def test_mutated_images_decode_or_raise_invalid_image(data: bytes) -> None:
    try:
        img = decode_image(data)
    except InvalidImageError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    _check(img)


@FUZZ
@given(odd_arrays())
def test_any_array_decodes_or_raises_invalid_image(arr) -> None:
    try:
        img = decode_image(arr)
    except InvalidImageError:
        return
    _check(img)


@pytest.fixture(scope="module")
def tiny_pipeline(model_dir: Path):
    path = model_dir / "fuzz.yaml"
    path.write_text("name: fuzz\ntiers:\n  - name: fast\n    stages:\n"
                    "      - {name: clf, kind: onnx_classifier, model: tiny.onnx, threads: 1}\n")
    with load_pipeline(path) as pipe:
        yield pipe


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated_images())
def test_api_answers_a_probability_or_invalid_image(tiny_pipeline, data: bytes) -> None:
    try:
        d = tiny_pipeline.predict(data)
    except InvalidImageError:
        return
    assert 0.0 <= d.probability <= 1.0
