"""vlm_transformers with a tiny random-initialised Qwen3-VL built here: processor, chat template and model run for real.

The venv holds the CPU build of torch, and PyPI's torchvision is a CUDA build that cannot load
next to it; transformers needs torchvision only for the Qwen-VL *video* processor, which an
image question never calls. So these tests leave that one slot empty (two test-local patches);
the tokenizer, the image processor, the processor's image-token expansion, the chat template and
the model's forward pass are the real ones.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
    pytest.skip("the installed transformers has no Qwen3-VL", allow_module_level=True)

from tests.stages._support import run_stage  # noqa: E402

from workzone.errors import ModelFileError  # noqa: E402
from workzone.stages.registry import create_stage  # noqa: E402
from workzone.stages.vlm_transformers import answer_token_ids  # noqa: E402
from workzone.types import Image  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
WORDS = ["[UNK]", "yes", "Yes", "YES", "no", "No", "user", "assistant", "system", "Is", "there", "road", "work",
         "or", "a", "construction", "zone", "in", "this", "image", "Answer", "?", ".", ",", "cones"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class _NoVideoProcessor:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return None


@pytest.fixture(scope="module", autouse=True)
def no_video_processor():
    """Leave the processor's video slot empty (see the module docstring); nothing else is patched."""
    from transformers import processing_utils as pu

    class Mapping(type(pu.MODALITY_TO_AUTOPROCESSOR_MAPPING)):
        def __getitem__(self, key):
            return _NoVideoProcessor if key == "video_processor" else super().__getitem__(key)

    with pytest.MonkeyPatch.context() as mp:
        if not hasattr(pu.transformers_module, "VideoProcessorMixin"):  # torchvision missing
            mp.setattr(pu.transformers_module, "VideoProcessorMixin", type(None), raising=False)
            mp.setattr(pu, "MODALITY_TO_AUTOPROCESSOR_MAPPING", Mapping())
        yield


def build_tiny_qwen3_vl(folder: Path, words=WORDS, seed: int = 0) -> Path:
    """Save a tiny Qwen3-VL (about 130k parameters), its tokenizer, image processor and chat template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>",
                                                eos_token="<|im_end|>")
    image_processor = transformers.Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2)
    ids = fast.convert_tokens_to_ids
    cfg = transformers.Qwen3VLConfig(
        text_config=dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True},
                         pad_token_id=fast.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3VLForConditionalGeneration(cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    model.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen3VLProcessor"}))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    return folder


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3vl") / "tiny-qwen3-vl")


def rand_image(seed: int, h: int, w: int) -> Image:
    return Image(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_scores_match_an_independent_forward_pass(tiny_vlm):
    images = [rand_image(1, 70, 110), rand_image(2, 48, 48), rand_image(3, 130, 60)]
    stage = create_stage("vlm_transformers", "vlm_local", {"model": str(tiny_vlm), "batch_size": 8, "max_pixels": 96 * 96})
    out = run_stage(stage, images)
    yes, no = stage.answer_ids
    proc = transformers.AutoProcessor.from_pretrained(tiny_vlm)
    tok = proc.tokenizer
    assert sorted(tok.convert_ids_to_tokens(yes)) == ["YES", "Yes", "yes"]
    assert sorted(tok.convert_ids_to_tokens(no)) == ["No", "no"]
    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    from workzone.stages.vlm_openai import downscale_to_pixels

    for im, o in zip(images, out):
        # One image at a time, no padding: the batched, left-padded stage must agree.
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": stage.params.question}]}]
        text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<|im_start|>assistant\n")
        inp = proc(text=[text], images=[downscale_to_pixels(im.pixels, 96 * 96)], return_tensors="pt")
        with torch.inference_mode():
            logp = torch.log_softmax(model(**inp).logits[0, -1].float(), -1)
        expected = float(torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0))
        assert o.log_odds == pytest.approx(expected, abs=1e-4)
        assert "P(yes)=" in o.evidence.notes[0] and "yes/no mass" in o.evidence.notes[0]
    assert len({round(o.log_odds, 6) for o in out}) == 3  # the pixels reach the model


def test_batch_size_does_not_change_scores(tiny_vlm):
    images = [rand_image(s, 40 + 17 * s, 90 - 9 * s) for s in range(4)]
    a = run_stage(create_stage("vlm_transformers", "a", {"model": str(tiny_vlm), "batch_size": 4}), images)
    b = run_stage(create_stage("vlm_transformers", "b", {"model": str(tiny_vlm), "batch_size": 1}), images)
    assert [x.log_odds for x in a] == pytest.approx([x.log_odds for x in b], abs=1e-4)


def test_relative_model_folder_resolves_against_the_pipeline(tiny_vlm):
    from workzone.stages.base import StageContext

    stage = create_stage("vlm_transformers", "rel", {"model": tiny_vlm.name, "max_log_odds": 0.001},
                         context=StageContext(base_dir=tiny_vlm.parent))
    out = run_stage(stage, [rand_image(9, 50, 50)])
    assert abs(out[0].log_odds) <= 0.001  # clipped by max_log_odds
    assert stage.describe()["answer_ids"]["yes"]


def test_vocabulary_without_yes_is_refused(tmp_path):
    folder = build_tiny_qwen3_vl(tmp_path / "noyes", words=[w for w in WORDS if w.lower() != "yes"])
    stage = create_stage("vlm_transformers", "bad", {"model": str(folder)})
    with pytest.raises(ModelFileError, match="no single-token 'yes' or 'no'"):
        asyncio.run(stage.load())


def test_missing_model_is_a_model_file_error(tmp_path):
    stage = create_stage("vlm_transformers", "gone", {"model": str(tmp_path / "nothing-here")})
    with pytest.raises(ModelFileError, match="cannot load"):
        asyncio.run(stage.load())


def test_answer_token_ids_skip_multi_token_spellings(tiny_vlm):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_vlm)
    # "YES" is in the vocabulary, "yEs" is not (it maps to [UNK], which does not decode to yes).
    assert answer_token_ids(tok, ["YES", "yEs", " yes"]) == [tok.convert_tokens_to_ids("YES"),
                                                             tok.convert_tokens_to_ids("yes")]
