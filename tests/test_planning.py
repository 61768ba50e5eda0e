"""GPU memory estimates, placement, launch commands (workzone/planning/) and pre-flight checks (workzone/checking.py)."""

from __future__ import annotations

import math
import re
from importlib.util import find_spec

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from workzone.config.loader import parse_pipeline
from workzone.errors import ConfigError
from workzone.checking import check_pipeline
from workzone.planning import (
    GiB,
    GpuSpec,
    launch_commands,
    lookup_model,
    parse_gpus,
    plan_pipeline,
)


def pipeline(*stages: str, name: str = "p") -> object:
    """A one-tier pipeline of inline stage mappings."""
    body = "\n".join(f"      - {s}" for s in stages)
    return parse_pipeline(f"name: {name}\ntiers:\n  - name: t\n    stages:\n{body}\n")


def vlm(name="vlm", model="Qwen/Qwen3-VL-8B-Instruct", port=8001, conc=4, pixels=448 * 448, kind="vlm_openai"):
    extra = f", max_pixels: {pixels}" if kind == "vlm_openai" else ""
    return (f"{{name: {name}, kind: {kind}, base_url: 'http://localhost:{port}/v1', model: '{model}', "
            f"max_concurrency: {conc}{extra}}}")


@pytest.mark.parametrize("model_id, key", [
    ("Qwen/Qwen3-VL-8B-Instruct", "qwen3-vl-8b"),
    ("Qwen/Qwen3-VL-8B-Instruct-FP8", "qwen3-vl-8b"),
    ("Qwen/Qwen3-VL-32B-Thinking", "qwen3-vl-32b"),
    ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3-vl-30b-a3b"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2-5-vl-7b"),
    ("OpenGVLab/InternVL3_5-8B", "internvl3-5-8b"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "deepseek-r1-distill-qwen-14b"),
    ("Qwen/Qwen3-8B", "qwen3-8b"),
    ("google/owlv2-large-patch14-ensemble", "owlv2-large"),
    ("IDEA-Research/grounding-dino-tiny", "grounding-dino-tiny"),
    ("depth-anything/Depth-Anything-V2-Small-hf", "depth-anything-v2-small"),
    ("facebook/sam3", "sam3"),
    ("google/siglip2-so400m-patch14-384", "siglip2-so400m"),
    ("openai/clip-vit-large-patch14", "clip-vit-large-patch14"),
    ("weights/yolo11s.pt", "yolo11s"),
    ("yolo26x.pt", "yolo26x"),
    ("my-own-vlm", None),
])
def test_lookup_model(model_id, key):
    spec = lookup_model(model_id)
    assert (spec.key if spec else None) == key


@pytest.mark.parametrize("text, expected", [
    ("2x80GB", GpuSpec(2, 80.0)), ("80GB", GpuSpec(1, 80.0)), ("4 x 141G", GpuSpec(4, 141.0)),
    ("1x23.5GiB", GpuSpec(1, 23.5)), ("8*24", GpuSpec(8, 24.0)),
])
def test_parse_gpus(text, expected):
    assert parse_gpus(text) == expected


@pytest.mark.parametrize("text", ["", "two gpus", "0x80GB", "2x0GB", "2x80TB"])
def test_parse_gpus_rejects(text):
    with pytest.raises(ConfigError, match="--gpus"):
        parse_gpus(text)


def test_engine_weights_and_kv_cache_follow_the_formulas():
    plan = plan_pipeline(pipeline(vlm(conc=4)), GpuSpec(1, 80))
    (item,) = plan.items
    assert item.engine and item.max_num_seqs == 4 and item.max_model_len == 2048
    assert item.weights_gb == pytest.approx(8.77e9 * 2 / GiB)
    # layers 36 x kv heads 8 x head dim 128 x (K, V) x bf16 x tokens x sequences
    assert item.kv_gb == pytest.approx(36 * 8 * 128 * 2 * 2 * 2048 * 4 / GiB)
    assert item.gpus == [0] and item.tp == 1
    # The engine's memory fraction covers what it needs.
    assert plan.utilisation(item) * 80 >= item.total_gb


def test_large_images_raise_the_context_length():
    plan = plan_pipeline(pipeline(vlm(pixels=2_000_000)), GpuSpec(1, 80))
    # 2e6 px / 32^2 = 1954 image tokens + question and answer: rounded up to 3072.
    assert plan.items[0].max_model_len == 3072


@pytest.mark.parametrize("quant, bytes_per_param", [("none", 2.0), ("fp8", 1.1), ("awq", 0.9 * 0.53 + 0.2),
                                                      ("nvfp4", 0.9 * 0.5625 + 0.2)])
def test_quantisation_shrinks_engine_weights(quant, bytes_per_param):
    plan = plan_pipeline(pipeline(vlm()), GpuSpec(1, 80), quant=quant)
    assert plan.items[0].weights_gb == pytest.approx(8.77e9 * bytes_per_param / GiB)


def test_stages_sharing_a_server_share_one_engine():
    cfg = parse_pipeline(f"""
tiers:
  - name: a
    stages:
      - {vlm("fast", conc=4)}
  - name: b
    stages:
      - {vlm("again", conc=6)}
      - {vlm("other", model="Qwen/Qwen3-VL-4B-Instruct", port=8002, conc=2)}
""")
    plan = plan_pipeline(cfg, GpuSpec(1, 80))
    engines = {i.model: i for i in plan.items}
    assert engines["Qwen/Qwen3-VL-8B-Instruct"].stages == ["fast", "again"]
    assert engines["Qwen/Qwen3-VL-8B-Instruct"].max_num_seqs == 10
    assert engines["Qwen/Qwen3-VL-4B-Instruct"].port == 8002


def test_first_fit_decreasing_spreads_what_does_not_fit_together():
    cfg = pipeline(vlm("small", model="Qwen/Qwen3-VL-4B-Instruct", port=8002, conc=2),
                   vlm("big", conc=2),
                   "{name: owl, kind: hf_zero_shot_detection, model: google/owlv2-base-patch16-ensemble, batch_size: 2}")
    plan = plan_pipeline(cfg, GpuSpec(2, 24))
    where = {i.stages[0]: i.gpus for i in plan.items}
    assert where == {"big": [0], "small": [1], "owl": [0]}  # biggest first; the small one fills the gap
    assert all(u <= 24 - plan.reserve_gb for u in plan.used)


def test_tensor_parallel_when_one_gpu_is_too_small():
    plan = plan_pipeline(pipeline(vlm(model="Qwen/Qwen3-VL-32B-Instruct", conc=4)), GpuSpec(2, 48))
    (item,) = plan.items
    assert item.tp == 2 and item.gpus == [0, 1]
    assert item.per_gpu_gb <= 47 and item.total_gb > 47
    (vllm, sglang, lmdeploy) = [c for _, _, c in launch_commands(plan)]
    assert vllm.startswith("CUDA_VISIBLE_DEVICES=0,1 vllm serve Qwen/Qwen3-VL-32B-Instruct")
    assert "--tensor-parallel-size 2" in vllm and "--tp-size 2" in sglang and "--tp 2" in lmdeploy


def test_impossible_plan_is_refused_with_the_numbers():
    with pytest.raises(ConfigError) as ei:
        plan_pipeline(pipeline(vlm(model="Qwen/Qwen3-VL-32B-Instruct")), GpuSpec(1, 24))
    msg = str(ei.value)
    assert msg.startswith("plan refused: engine:Qwen/Qwen3-VL-32B-Instruct")
    assert "weights 62.2" in msg and "GPU0: 23.0" in msg


def test_impossible_even_with_tensor_parallel_says_so():
    with pytest.raises(ConfigError, match=r"even split over 2 GPUs \(tensor parallel\) it needs"):
        plan_pipeline(pipeline(vlm(model="Qwen/Qwen2.5-VL-72B-Instruct")), GpuSpec(2, 48))


def test_unknown_engine_model_is_an_error_not_a_guess():
    with pytest.raises(ConfigError, match="cannot size the engine for model 'acme/vlm-9000'"):
        plan_pipeline(pipeline(vlm(model="acme/vlm-9000")), GpuSpec(1, 80))


def test_cpu_stages_and_unknown_vision_models():
    cfg = pipeline("{name: clf, kind: onnx_classifier}",
                   "{name: zs, kind: hf_zero_shot_image, model: acme/mystery-clip, positive_prompts: [a], negative_prompts: [b]}")
    plan = plan_pipeline(cfg, GpuSpec(1, 16))
    assert plan.cpu_stages == ["clf"]
    assert [i.stages for i in plan.items] == [["zs"]] and "acme/mystery-clip" in plan.warnings[0]


@pytest.mark.parametrize("quant, vllm_flag", [("fp8", "--quantization fp8"), ("awq", "--quantization awq"),
                                              ("nvfp4", "--quantization modelopt_fp4"), ("none", None)])
def test_launch_commands(quant, vllm_flag):
    cfg = pipeline(vlm(), vlm("judge", model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", port=8003, kind="reasoner_openai"))
    cmds = {(e, s): c for e, s, c in launch_commands(plan_pipeline(cfg, GpuSpec(1, 80), quant=quant))}
    v = cmds[("engine:Qwen/Qwen3-VL-8B-Instruct", "vllm")]
    assert "--port 8001" in v and "--max-model-len 2048" in v and "--max-num-seqs 4" in v
    assert "--enable-prefix-caching" in v and "--limit-mm-per-prompt '{\"image\": 1, \"video\": 0}'" in v
    assert re.search(r"--gpu-memory-utilization 0\.\d\d", v)
    assert (vllm_flag in v) if vllm_flag else "--quantization" not in v
    r = cmds[("engine:deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "vllm")]
    assert "--limit-mm-per-prompt" not in r and "--reasoning-parser deepseek_r1" in r
    assert "--reasoning-parser deepseek-r1" in cmds[("engine:deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "sglang")]
    lm = cmds.get(("engine:Qwen/Qwen3-VL-8B-Instruct", "lmdeploy"))
    if quant == "nvfp4":  # LMDeploy cannot serve NVFP4: no command for it, a plan warning instead
        assert lm is None
    else:
        assert "--session-len 2048" in lm and "--cache-max-entry-count" in lm


def test_engines_on_one_gpu_do_not_ask_for_more_than_it_has():
    cfg = pipeline(vlm(conc=8), vlm("v4", model="Qwen/Qwen3-VL-4B-Instruct", port=8002, conc=8),
                   vlm("judge", model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", port=8003, kind="reasoner_openai"))
    plan = plan_pipeline(cfg, GpuSpec(1, 80))
    assert sum(plan.utilisation(i) for i in plan.items) <= 0.95
    assert {tuple(i.gpus) for i in plan.items} == {(0,)}


# --- check --------------------------------------------------------------------------------------


def test_check_extras_and_model_files(tmp_path):
    (tmp_path / "here.onnx").write_bytes(b"x")
    cfg = pipeline("{name: a, kind: onnx_classifier, model: here.onnx}",
                   "{name: b, kind: onnx_classifier, model: gone.onnx}",
                   "{name: c, kind: onnx_classifier, enabled: false}")
    rows = {(r.stage, r.check): r for r in check_pipeline(cfg, tmp_path)}
    assert rows[("a", "extras")].ok is True and "[default] installed" in rows[("a", "extras")].detail
    assert rows[("a", "model")].ok is True
    assert rows[("b", "model")].ok is False and "gone.onnx does not exist" in rows[("b", "model")].detail
    assert rows[("c", "enabled")].ok is None


def test_check_names_the_extra_to_install(tmp_path, monkeypatch):
    # A requirement no environment has, so the missing branch runs whatever is installed here.
    from workzone.stages.registry import get_stage_class

    monkeypatch.setattr(get_stage_class("ultralytics"), "requires", ("onnxruntime", "workzone_no_such_module"))
    rows = check_pipeline(pipeline("{name: y, kind: ultralytics, model: yolo11n.yaml}"), tmp_path)
    extras = next(r for r in rows if r.check == "extras")
    assert extras.ok is False
    assert extras.detail == "missing workzone_no_such_module: pip install 'workzone[detect]'"


def test_check_knows_packaged_configs_and_what_would_be_downloaded(tmp_path):
    pytest.importorskip("ultralytics")
    cfg = pipeline("{name: y, kind: ultralytics, model: yolo11n.yaml}", "{name: r, kind: ultralytics, model: rtdetr-l.yaml}",
                   "{name: w, kind: ultralytics, model: yolo11s.pt, allow_download: true}",
                   "{name: o, kind: hf_zero_shot_detection, model: org/never-cached-owl, prompts: {cone: cone}}")
    offline = {(r.stage, r.check): r for r in check_pipeline(cfg, tmp_path, reachable=lambda host: False)}
    assert offline[("y", "model")].ok is True and offline[("r", "model")].ok is True
    assert offline[("w", "download")].ok is False and "github.com, which is not reachable" in offline[("w", "download")].detail
    assert offline[("o", "download")].ok is False and "huggingface.co" in offline[("o", "download")].detail
    online = {(r.stage, r.check): r for r in check_pipeline(cfg, tmp_path, reachable=lambda host: True)}
    assert online[("o", "download")].ok is None and "will be downloaded from huggingface.co" in online[("o", "download")].detail


def test_check_endpoints(tmp_path):
    with FakeOpenAIServer(models=("Qwen/Qwen3-VL-8B-Instruct",)) as srv:
        port = srv.port
        cfg = pipeline(vlm(port=port), vlm("wrong", model="Qwen/Qwen3-VL-4B-Instruct", port=port))
        rows = {r.stage: r for r in check_pipeline(cfg, tmp_path, endpoints=True) if r.check == "endpoint"}
    assert rows["vlm"].ok is True and rows["vlm"].detail.endswith("serves Qwen/Qwen3-VL-8B-Instruct")
    assert rows["wrong"].ok is False and "not 'Qwen/Qwen3-VL-4B-Instruct'" in rows["wrong"].detail
    down = check_pipeline(cfg, tmp_path, endpoints=True, timeout_s=1)  # the server is gone now
    assert [r.ok for r in down if r.check == "endpoint"] == [False, False]
    assert "ConnectError" in next(r.detail for r in down if r.check == "endpoint")
    assert not [r for r in check_pipeline(cfg, tmp_path) if r.check == "endpoint"]  # only with endpoints=True


def test_kv_formula_by_hand():
    # 14B R1 distill: 48 layers, 8 KV heads of 128; 2048 prompt + 1024 answer tokens x 8 sequences, bf16.
    plan = plan_pipeline(pipeline(vlm("judge", model="deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", conc=8,
                                      kind="reasoner_openai")), GpuSpec(1, 80))
    item = plan.items[0]
    assert item.max_model_len == 2048 + 1024 and not item.image_limit
    assert math.isclose(item.kv_gb, 2 * 48 * 8 * 128 * 2 * 3072 * 8 / GiB)


def test_stages_pinned_to_a_device_stay_there():
    owl = "{name: owl, kind: hf_zero_shot_detection, device: 'cuda:1', model: google/owlv2-base-patch16-ensemble}"
    plan = plan_pipeline(pipeline(owl, vlm()), GpuSpec(2, 80))
    where = {i.stages[0]: i.gpus for i in plan.items}
    assert where == {"owl": [1], "vlm": [0]}
    with pytest.raises(ConfigError, match="pinned to cuda:1 but the plan has 1 GPU"):
        plan_pipeline(pipeline(owl), GpuSpec(1, 80))


def test_depth_stage_counts_the_detector_it_wraps():
    depth = ("{name: depth, kind: hf_depth, model: depth-anything/Depth-Anything-V2-Large-hf, batch_size: 2, "
             "detector: {kind: hf_zero_shot_detection, model: IDEA-Research/grounding-dino-base, batch_size: 2}}")
    (item,) = plan_pipeline(pipeline(depth), GpuSpec(1, 24)).items
    assert item.model == "depth-anything/Depth-Anything-V2-Large-hf + IDEA-Research/grounding-dino-base"
    assert item.weights_gb == pytest.approx((0.335 + 0.233) * 1e9 * 2 / GiB)  # fp16 on CUDA ("auto")
    assert item.act_gb == pytest.approx(2 * 0.4 + 2 * 0.6)


def test_engine_reservation_never_understates_a_too_big_engine():
    # 0.95 is the largest share asked for; an engine needing more than that must not "fit".
    with pytest.raises(ConfigError, match="plan refused"):
        plan_pipeline(pipeline(vlm(model="Qwen/Qwen3-VL-32B-Instruct")), GpuSpec(1, 70))


def test_too_few_gpus_are_refused_on_memory_before_a_pin():
    owl = "{name: owl, kind: hf_zero_shot_detection, device: 'cuda:1', model: google/owlv2-base-patch16-ensemble}"
    with pytest.raises(ConfigError) as ei:
        plan_pipeline(pipeline(owl, vlm(model="Qwen/Qwen3-VL-32B-Instruct")), GpuSpec(1, 24))
    msg = str(ei.value)
    assert msg.startswith("plan refused: the GPU stages need ") and "but 1 x 24 GB gives 23.0 GB" in msg
    assert "GB short" in msg and "engine:Qwen/Qwen3-VL-32B-Instruct" in msg and "cuda:1" not in msg


def test_an_engine_block_overriding_quant_is_reported():
    own = vlm(model="Qwen/Qwen3-VL-32B-Instruct")[:-1] + ", engine: {quantization: fp8}}"
    plan = plan_pipeline(pipeline(own), GpuSpec(1, 80), "awq")
    (item,) = plan.items
    assert item.quant == "fp8"
    assert any("sets quantization fp8, which overrides --quant awq" in w for w in plan.warnings)
    assert not any("overrides" in w for w in plan_pipeline(pipeline(own), GpuSpec(1, 80), "fp8").warnings)


def test_check_and_plan_know_dfine_and_yolo_world(tmp_path):
    (tmp_path / "vocab.pt").write_bytes(b"x")
    cfg = pipeline("{name: d, kind: dfine, model: ustc-community/dfine-medium-coco, device: cuda}",
                   "{name: dl, kind: dfine, model: ./my-dfine}",
                   "{name: w, kind: yolo_world, model: vocab.pt, device: cuda, prompts: {a traffic cone: cone}}",
                   "{name: wg, kind: yolo_world, model: gone-world.pt}",
                   "{name: wy, kind: yolo_world, model: yolov8s-worldv2.yaml}")
    rows = {(r.stage, r.check): r for r in check_pipeline(cfg, tmp_path, reachable=lambda host: False)}
    assert rows[("d", "extras")].detail in ("[hf] installed", "missing transformers, torch: pip install 'workzone[hf]'") \
        or rows[("d", "extras")].detail.startswith("missing ")
    # offline: a hub checkpoint not in the cache is reported as a download that cannot happen
    assert rows[("d", "download")].ok is False and "huggingface.co, which is not reachable" in rows[("d", "download")].detail
    assert rows[("dl", "model")].ok is False and "my-dfine does not exist" in rows[("dl", "model")].detail
    assert rows[("w", "model")].ok is True and rows[("wg", "model")].ok is False
    assert "gone-world.pt does not exist" in rows[("wg", "model")].detail
    assert rows[("w", "extras")].detail.endswith("'workzone[detect]'") or rows[("w", "extras")].detail == "[detect] installed"
    if find_spec("ultralytics") is not None:
        assert rows[("wy", "model")].ok is True and "ships with the detect extra" in rows[("wy", "model")].detail
    plan = plan_pipeline(pipeline("{name: d, kind: dfine, model: ustc-community/dfine-xlarge-obj2coco}",
                                  "{name: w, kind: yolo_world, model: yolov8m-worldv2.pt, half: true}"), GpuSpec(1, 24))
    items = {i.stages[0]: i for i in plan.items}
    assert {k: i.spec.key for k, i in items.items()} == {"d": "dfine-xlarge", "w": "yolov8m-world"}
    assert items["w"].weights_gb == pytest.approx(0.029e9 * 2 / GiB) and not plan.warnings
