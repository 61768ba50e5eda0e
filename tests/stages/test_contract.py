"""The contract every registered stage kind keeps, run over ``list_stages()`` with each kind's ``tiny_params``.

Every kind: declares what it needs on its class (extra, requires, where it runs, tiny params); rejects
unknown params with a message naming the key; has frozen params; and after load() returns one output
per image whose log-odds is finite or None, and closes twice safely. Kinds whose library cannot run
here are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from workzone.errors import ConfigError
from workzone.stages.base import Stage, StageContext
from workzone.stages.registry import builtin_modules, create_stage, get_stage_class, list_stages
from workzone.types import Image, StageOutput

# Every kind the registry knows, but not the deliberately odd ones tests register for themselves
# (tests/stages_fixtures.py: a failing stage, a sleepy one, ...).
_TESTS = Path(__file__).resolve().parents[1]
KINDS = [k for k in list_stages() if _TESTS not in Path(inspect.getfile(get_stage_class(k))).resolve().parents]
IMAGES = [Image(np.zeros((48, 64, 3), np.uint8)),
          Image(np.random.default_rng(5).integers(0, 255, (70, 40, 3), dtype=np.uint8)),
          Image(np.full((32, 32, 3), 250, np.uint8))]
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def _cannot_import(modules: tuple[str, ...]) -> str | None:
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as exc:  # noqa: BLE001 - any import failure means the backend cannot run here
            return f"{m} cannot be imported here ({type(exc).__name__})"
    return None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Builds the tiny artefacts that ``tiny:NAME`` strings in ``tiny_params`` stand for, once per module."""
    root = tmp_path_factory.mktemp("contract")
    cache: dict[str, Any] = {}
    servers: list[FakeOpenAIServer] = []

    def build(name: str) -> Any:
        from tests.stages import _tiny_hf
        from tests.stages.test_onnx_detector import _yolov8_onnx

        if name == "yolov8.onnx":
            _yolov8_onnx(root / name)
            return str(root / name)
        if name in ("patch-extractor.onnx", "patch-bank.npz"):  # patch_anomaly: patch mean colours vs a grey bank
            import json

            from tests.stages.test_patch_anomaly import _mean_colour_extractor

            _mean_colour_extractor(root / "patch-extractor.onnx")
            np.savez(root / "patch-bank.npz", bank=np.array([[0.5, 0.5, 0.5]], np.float16),
                     meta=np.array(json.dumps({"size": 64, "offset": 0.2, "scale": 0.05})))
            return str(root / name)
        if name == "openai":
            servers.append(FakeOpenAIServer().start())
            return servers[-1].url
        builders = {"vit": lambda p: _tiny_hf.save_vit_classifier(p, ["none", "roadwork"]), "clip": _tiny_hf.save_clip,
                    "owlv2": _tiny_hf.save_owlv2, "depth": _tiny_hf.save_depth_anything, "sam": _tiny_hf.save_sam,
                    "dfine": _tiny_hf.save_dfine}
        if name not in builders:
            pytest.skip(f"no tiny builder for {name!r} here (its kind's own test builds it)")
        return str(builders[name](root / name))

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("tiny:"):
            name = value.removeprefix("tiny:")
            if name not in cache:
                cache[name] = build(name)
            return cache[name]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    yield resolve
    for srv in servers:
        srv.stop()


def _runnable(kind: str) -> type[Stage]:
    cls = get_stage_class(kind)
    why = _cannot_import(cls.requires)
    if why:
        pytest.skip(f"{kind}: {why}")
    return cls


@pytest.mark.parametrize("kind", KINDS)
def test_kind_declares_what_it_needs(kind):
    cls = get_stage_class(kind)
    assert cls.kind == kind
    assert cls.extra == "default" or cls.extra in _pyproject()["project"]["optional-dependencies"]
    assert cls.runs_on in ("cpu", "gpu", "engine")
    assert cls.tiny_params is not None, f"{kind}: declare tiny_params on the class"
    assert cls.Params.model_config.get("frozen") is True and cls.Params.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_param_is_rejected_by_name(kind):
    with pytest.raises(ConfigError) as err:
        create_stage(kind, "s", {**get_stage_class(kind).tiny_params, "definitely_not_a_param": 1})
    assert "definitely_not_a_param" in str(err.value) and "unknown key" in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_returns_one_finite_output_per_image(kind, tiny, tmp_path):
    cls = _runnable(kind)
    stage = create_stage(kind, "s", tiny(dict(cls.tiny_params)), context=StageContext(base_dir=tmp_path))

    async def go():
        try:
            await stage.predict(IMAGES[:1])
        except Exception as exc:  # noqa: BLE001 - checked below
            early = exc
        else:
            early = None
        await stage.load()
        try:
            return early, await stage.predict(IMAGES), await stage.predict([])
        finally:
            await stage.aclose()
            await stage.aclose()  # safe twice

    early, outs, empty = asyncio.run(go())
    if type(stage).load is not Stage.load:  # a kind that loads something refuses to predict before
        assert early is not None and "before load()" in str(early)
    assert len(outs) == len(IMAGES) and empty == []
    for out in outs:
        assert isinstance(out, StageOutput)
        assert out.log_odds is None or math.isfinite(out.log_odds)


def test_builtin_kinds_are_entry_points_named_after_their_modules():
    eps = _pyproject()["project"]["entry-points"]["workzone.stages"]
    assert {k: v.split(":")[0] for k, v in eps.items()} == builtin_modules()
    for kind, target in eps.items():
        module, cls = target.split(":")
        assert get_stage_class(kind).__name__ == cls and get_stage_class(kind).__module__ == module


def test_importing_the_stage_modules_pulls_in_no_heavy_library():
    code = ("import sys\n"
            f"import {', '.join(sorted(builtin_modules().values()))}\n"
            "print(sorted(m for m in ('torch', 'transformers', 'ultralytics', 'rfdetr', 'onnxruntime', 'torchvision',"
            " 'httpx', 'tenacity', 'rapidocr_onnxruntime', 'cv2') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
