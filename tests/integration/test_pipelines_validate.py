"""Every shipped pipeline parses, builds its stages, passes ``workzone check`` and fits its GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from workzone.cascade import build_stages
from workzone.config.loader import builtin_pipeline_path, builtin_pipelines, load_pipeline_config
from workzone.checking import check_pipeline
from workzone.errors import ConfigError
from workzone.planning import GpuSpec, plan_pipeline
from workzone.stages.base import StageContext

REPO = Path(__file__).resolve().parents[2]
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml")) + [builtin_pipeline_path(n) for n in builtin_pipelines()]
MODELS = REPO / "src" / "workzone" / "models"

#: The hardware each GPU pipeline is written for (its header comment says the same).
TARGET_GPUS = {"seven-tier": GpuSpec(2, 80), "single-gpu": GpuSpec(1, 24)}


def ids(paths):
    return [p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else p.name for p in paths]


def test_the_shipped_pipelines_are_found():
    names = {p.stem for p in PIPELINES}
    assert {"seven-tier", "single-gpu"} <= names


@pytest.mark.parametrize("path", PIPELINES, ids=ids(PIPELINES))
def test_pipeline_parses_and_builds(path):
    cfg, where = load_pipeline_config(path)
    assert cfg.tiers and where == path
    # Instantiating validates what parsing cannot (an hf_depth stage builds the detector it wraps).
    tiers = build_stages(cfg, StageContext(base_dir=path.parent))
    assert [len(t) for t in tiers] == [sum(s.enabled for s in t.stages) for t in cfg.tiers]
    closed = [t.name for t in cfg.tiers[:-1] if t.exit.lower is None and t.exit.upper is None]
    if cfg.tuning and closed:
        # A tuned tier that lets no image out is one `tune` chose to keep closed out of fold, and says so.
        chosen = cfg.tuning.get("exit_tiers", {}).get("chosen")
        assert chosen is not None and not set(closed) & set(chosen), (closed, chosen)
        assert any(c["may_exit"] for c in cfg.tuning["exit_tiers"]["candidates"])  # exits were tried


@pytest.mark.parametrize("path", PIPELINES, ids=ids(PIPELINES))
def test_pipeline_check_finds_only_missing_installs(path):
    """Problems may only be extras this environment lacks, embedded models this checkout has not built, or
    downloads without a network."""
    cfg, _ = load_pipeline_config(path)
    rows = check_pipeline(cfg, path.parent, reachable=lambda host: False)
    unexpected = [r for r in rows if r.ok is False and r.check not in ("extras", "download")
                  and not (r.check == "model" and r.detail.startswith(str(MODELS)))]
    assert not unexpected, unexpected
    for r in rows:
        if r.check == "extras" and r.ok is False:
            assert r.detail.startswith("missing ") and "pip install 'workzone[" in r.detail


@pytest.mark.skipif(not any(MODELS.glob("*.onnx")), reason="embedded models are not built in this checkout")
@pytest.mark.parametrize("path", PIPELINES, ids=ids(PIPELINES))
def test_embedded_models_exist(path):
    cfg, _ = load_pipeline_config(path)
    rows = [r for r in check_pipeline(cfg, path.parent, reachable=lambda host: False) if r.check == "model"]
    assert all(r.ok is not False for r in rows), rows


@pytest.mark.parametrize("name, gpus", sorted(TARGET_GPUS.items()))
def test_gpu_pipeline_fits_its_hardware(name, gpus):
    cfg, _ = load_pipeline_config(REPO / "pipelines" / f"{name}.yaml")
    plan = plan_pipeline(cfg, gpus)
    assert all(u <= gpus.memory_gb - plan.reserve_gb for u in plan.used)
    assert any(i.engine for i in plan.items) and not plan.warnings


@pytest.mark.parametrize("name", sorted(TARGET_GPUS))
def test_showcase_pipelines_start_from_the_shipped_object_path(name):
    """The default's stages (sign OCR, the embedded object detector, the verifier that needs its boxes, so one tier
    later) come first; heavy tiers sit behind them."""
    cfg, _ = load_pipeline_config(REPO / "pipelines" / f"{name}.yaml")
    default, _ = load_pipeline_config("default")
    heavy = {"vlm_openai", "reasoner_openai", "hf_segmentation", "hf_zero_shot_detection", "hf_zero_shot_image"}
    first_heavy = next(i for i, t in enumerate(cfg.tiers) if {s.kind for s in t.stages} & heavy)
    shipped = {(s.kind, getattr(s.params, "model", None)) for t in default.tiers for s in t.stages}
    before = {(s.kind, getattr(s.params, "model", None)) for t in cfg.tiers[:first_heavy] for s in t.stages}
    assert shipped <= before
    assert {s.kind for s in cfg.tiers[0].stages} >= {"sign_ocr", "roadwork_detector"}
    assert {s.kind for t in cfg.tiers[first_heavy:] for s in t.stages} & heavy


def test_too_few_gpus_for_seven_tier_are_refused_on_memory():
    cfg, _ = load_pipeline_config(REPO / "pipelines" / "seven-tier.yaml")
    with pytest.raises(ConfigError, match=r"plan refused: the GPU stages need [0-9.]+ GB in all, but 1 x 24 GB gives"):
        plan_pipeline(cfg, GpuSpec(1, 24))
