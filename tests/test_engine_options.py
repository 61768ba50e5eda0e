"""Tests for workzone.engine_options and its use by ``workzone plan``: per-stage quantisation, KV-cache
dtype, prefix caching, context length and image-token budget, refused where an engine cannot."""

from __future__ import annotations

import pytest

from tests.test_planning import pipeline, vlm
from workzone.engine_options import EngineOptions, check_engine_options, engine_flags
from workzone.errors import ConfigError
from workzone.planning import GpuSpec, launch_commands, plan_pipeline


def with_engine(stage: str, engine: str) -> str:
    return stage[:-1] + f", engine: {engine}}}"


def _commands(cfg, gpus=GpuSpec(1, 80), quant="none"):
    plan = plan_pipeline(cfg, gpus, quant=quant)
    return plan, {(e, s): c for e, s, c in launch_commands(plan)}


def test_two_stages_get_different_quantisation_and_it_shows_in_memory_and_commands():
    cfg = pipeline(with_engine(vlm(), "{quantization: fp8, kv_cache_dtype: fp8, servers: [vllm, sglang]}"),
                   with_engine(vlm("big", model="Qwen/Qwen3-VL-32B-Instruct", port=8002),
                               "{quantization: awq, servers: [vllm, lmdeploy]}"))
    plan, cmds = _commands(cfg, GpuSpec(2, 80))
    small, big = plan.items
    assert (small.quant, big.quant) == ("fp8", "awq")
    assert small.weights_gb == pytest.approx(8.77e9 * (0.9 * 1.0 + 0.2) / 1024 ** 3, rel=1e-3)
    ref, _ = _commands(pipeline(vlm()))  # bf16 KV: twice the fp8 cache
    assert small.kv_gb == pytest.approx(ref.items[0].kv_gb / 2)
    assert "--quantization fp8" in cmds[(small.name, "vllm")] and "--kv-cache-dtype fp8" in cmds[(small.name, "vllm")]
    assert "--kv-cache-dtype fp8_e4m3" in cmds[(small.name, "sglang")]
    assert (small.name, "lmdeploy") not in cmds  # ruled out by its servers
    assert "--quantization awq" in cmds[(big.name, "vllm")] and "--model-format awq" in cmds[(big.name, "lmdeploy")]
    assert (big.name, "sglang") not in cmds


@pytest.mark.parametrize(("engine", "message"), [
    ("{quantization: nvfp4}", "quantization nvfp4 is not supported by lmdeploy; it is by vllm and sglang: "
                              "set engine: {servers: [vllm, sglang]}"),
    ("{quantization: int8, servers: [lmdeploy]}", "no engine listed can serve it"),
    ("{kv_cache_dtype: int4}", "kv_cache_dtype int4 is not supported by vllm; it is by lmdeploy"),
    ("{kv_cache_dtype: fp8, servers: [lmdeploy]}", "not supported by lmdeploy"),
    ("{max_model_len: 1024}", "max_model_len 1024 is below the 2048 tokens"),
    ("{image_tokens: 64}", "max_pixels 200704 is 196 visual tokens per image, above its engine's image_tokens 64"),
])
def test_unsupported_combinations_are_refused_with_what_to_do(engine, message):
    with pytest.raises(ConfigError) as err:
        plan_pipeline(pipeline(with_engine(vlm(), engine)), GpuSpec(1, 80))
    assert message in str(err.value) and "stage 'vlm'" in str(err.value)


def test_context_length_prefix_cache_and_image_budget_reach_the_commands():
    cfg = pipeline(with_engine(vlm(), "{max_model_len: 8192, prefix_caching: false, image_tokens: 256}"))
    plan, cmds = _commands(cfg)
    item = plan.items[0]
    assert item.max_model_len == 8192
    v, s, lm = (cmds[(item.name, k)] for k in ("vllm", "sglang", "lmdeploy"))
    assert "--max-model-len 8192" in v and "--no-enable-prefix-caching" in v
    assert """--mm-processor-kwargs '{"max_pixels": 262144}'""" in v  # 256 tokens x 32 x 32 px
    assert "--context-length 8192" in s and "--disable-radix-cache" in s
    assert "--session-len 8192" in lm and "--enable-prefix-caching" not in lm
    longer, _ = _commands(pipeline(with_engine(vlm(), "{max_model_len: 16384}")))
    assert longer.items[0].kv_gb == pytest.approx(2 * item.kv_gb)


def test_stages_sharing_an_engine_must_agree():
    cfg = pipeline(with_engine(vlm(), "{quantization: fp8}"), vlm("again"))
    with pytest.raises(ConfigError, match="shares the engine"):
        plan_pipeline(cfg, GpuSpec(1, 80))


def test_a_plan_wide_quant_an_engine_lacks_drops_its_command_with_a_warning():
    plan, cmds = _commands(pipeline(vlm()), quant="nvfp4")
    assert ("engine:Qwen/Qwen3-VL-8B-Instruct", "lmdeploy") not in cmds
    assert any("not supported by lmdeploy" in w for w in plan.warnings)


def test_engine_flags_and_unknown_keys():
    assert engine_flags("sglang", "int8", None) == ["--quantization w8a8_int8"]
    assert engine_flags("vllm", "int8", None)[0].startswith("# int8: serve a pre-quantised checkpoint")
    check_engine_options("s", EngineOptions(quantization="gptq"), "gptq")  # every engine serves GPTQ
    with pytest.raises(ConfigError, match="quantisation"):
        pipeline(with_engine(vlm(), "{quantisation: fp8}"))


def test_workzone_check_reports_engine_blocks():
    from pathlib import Path

    from workzone.checking import check_pipeline

    cfg = pipeline(with_engine(vlm(), "{quantization: nvfp4}"),
                   with_engine(vlm("ok", model="Qwen/Qwen3-VL-4B-Instruct", port=8002), "{kv_cache_dtype: fp8, servers: [vllm]}"),
                   "{name: clf, kind: onnx_classifier, engine: {quantization: fp8}}")
    rows = {(r.stage, r.check): r for r in check_pipeline(cfg, Path("."))}
    assert rows[("vlm", "engine")].ok is False and "not supported by lmdeploy" in rows[("vlm", "engine")].detail
    assert rows[("ok", "engine")].ok is True
    assert rows[("clf", "engine")].ok is False and "applies to" in rows[("clf", "engine")].detail and "vlm_openai" in rows[("clf", "engine")].detail
