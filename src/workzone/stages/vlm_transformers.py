"""The VLM yes/no question answered in-process by a transformers vision-language model.

Same question and score as ``vlm_openai``, without a server: the image and question go through the
model's own processor and chat template (``AutoProcessor``), one forward pass of
``AutoModelForImageTextToText`` gives the next-token logits after the assistant prompt, and

    log_odds = logsumexp(logp[yes_ids]) - logsumexp(logp[no_ids])

where ``yes_ids`` / ``no_ids`` are the single-token spellings of yes / no in the model's vocabulary
("yes", "Yes", " Yes", ...). Qwen3-VL Instruct models are the first target (Qwen2-VL, Qwen2.5-VL
and other chat VLMs with an image chat template work the same way). Thinking variants answer
with reasoning first, so serve them with ``vlm_openai`` or ``reasoner_openai`` instead.

Needs the ``vlm-local`` extra (torch, transformers; Qwen-VL processors also import torchvision).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages._hf_common import HFStage
from workzone.stages.base import StageParams
from workzone.stages.vlm_openai import DEFAULT_QUESTION, classify_answer_token, downscale_to_pixels
from workzone.types import Evidence, Image, StageOutput, sigmoid

__all__ = ["VlmTransformersParams", "VlmTransformersStage", "answer_token_ids"]

_YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
_NO_SPELLINGS = ("no", "No", "NO", " no", " No", " NO")


class VlmTransformersParams(StageParams):
    model: str = Field(min_length=1, description="hub id (Qwen/Qwen3-VL-4B-Instruct) or a local folder")
    question: str = Field(default=DEFAULT_QUESTION, min_length=1)
    system_prompt: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on CPU")
    max_pixels: int = Field(default=448 * 448, ge=32 * 32, le=16_000_000,
                            description="images are downscaled to at most this many pixels first")
    batch_size: int = Field(default=4, ge=1, le=256)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict,
                                                 description="extra chat-template variables")
    trust_remote_code: bool = False
    max_log_odds: float = Field(default=12.0, gt=0, le=50, description="scores are clipped to +-this")


class VlmTransformersStage(HFStage):
    """Scores images by a local VLM's next-token log-probabilities of yes versus no."""

    kind = "vlm_transformers"
    extra = "vlm-local"
    requires = ("transformers", "torch", "torchvision")
    tiny_params = {"model": "tiny:qwen3-vl"}
    Params = VlmTransformersParams
    default_cost = 2000.0
    params: VlmTransformersParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._torch: Any = None
        self._yes: list[int] = []
        self._no: list[int] = []

    @property
    def answer_ids(self) -> tuple[list[int], list[int]]:
        """Token ids scored as yes and as no (after :meth:`load`)."""
        return list(self._yes), list(self._no)

    def _load_sync(self) -> None:
        torch = require("torch", "vlm-local", "in-process VLMs")
        tf = require("transformers", "vlm-local", "in-process VLMs")
        p = self.params
        local = self.context.resolve(p.model)
        src = str(local) if local.exists() else p.model  # a folder next to the pipeline, else a hub id
        device = self.context.device
        dtype = _torch_dtype(torch, p.dtype, device)
        try:
            self._processor = tf.AutoProcessor.from_pretrained(src, trust_remote_code=p.trust_remote_code)
        except ImportError as exc:
            raise ModelFileError(f"stage {self.name!r}: the processor of {src} needs a missing library: {exc}. "
                                 "Qwen-VL processors need torchvision: pip install 'workzone[vlm-local]'") from exc
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"stage {self.name!r}: cannot load the processor of {src}: {exc}") from exc
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": p.trust_remote_code}
        if p.attn_implementation:
            kwargs["attn_implementation"] = p.attn_implementation
        try:
            model = tf.AutoModelForImageTextToText.from_pretrained(src, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"stage {self.name!r}: cannot load {src} as an image-text-to-text model: {exc}") from exc
        self._model, self._device = model.to(device).eval(), device
        self._torch = torch
        tokenizer = self._processor.tokenizer
        # Left padding puts every sequence's last prompt token in the last column, where the next
        # token's logits are read.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._yes = answer_token_ids(tokenizer, _YES_SPELLINGS)
        self._no = answer_token_ids(tokenizer, _NO_SPELLINGS)
        if not self._yes or not self._no:
            raise ModelFileError(f"stage {self.name!r}: the tokenizer of {src} has no single-token 'yes' or 'no' "
                                 f"(yes ids {self._yes}, no ids {self._no}); this stage cannot score it")

    async def warmup(self) -> None:
        await self.run_blocking(self._predict_sync, [Image(np.full((64, 64, 3), 127, np.uint8))])

    def _prompt(self) -> str:
        p = self.params
        messages: list[dict[str, Any]] = []
        if p.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": p.system_prompt}]})
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]})
        return self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                   **p.chat_template_kwargs)

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        prompt = self._prompt()
        out: list[StageOutput] = []
        for i in range(0, len(batch), self.params.batch_size):
            chunk = batch[i:i + self.params.batch_size]
            pil = [downscale_to_pixels(im.pixels, self.params.max_pixels) for im in chunk]
            out.extend(self._score(prompt, pil))
        return out

    def _score(self, prompt: str, images: list[Any]) -> list[StageOutput]:
        torch = self._torch
        inputs = self._processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)
        # Floating tensors (pixel values) also take the model's dtype; ids stay integer.
        inputs = inputs.to(device=self._model.device, dtype=self._model.dtype)
        with self._lock, torch.inference_mode():
            logits = self._model(**inputs).logits[:, -1, :].float()
        logp = torch.log_softmax(logits, dim=-1)
        y = torch.logsumexp(logp[:, self._yes], dim=-1)
        n = torch.logsumexp(logp[:, self._no], dim=-1)
        mass = torch.exp(torch.logaddexp(y, n))
        m = self.params.max_log_odds
        results = []
        for zi, mi in zip((y - n).tolist(), mass.tolist()):
            zi = max(-m, min(m, float(zi)))  # clip in float64: a float32 clamp can overshoot m
            p_yes = sigmoid(zi)
            note = f"{self.params.model}: P(yes)={p_yes:.3f} from next-token logits (yes/no mass {mi:.2f})"
            results.append(StageOutput(zi, Evidence(notes=(note,))))
        return results

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["device"] = self.context.device
        d["answer_ids"] = {"yes": self._yes, "no": self._no}
        return d


def answer_token_ids(tokenizer: Any, spellings: Sequence[str]) -> list[int]:
    """Ids of the spellings that are one token in ``tokenizer`` and decode back to that answer.

    A spelling split into several tokens is skipped: its first piece ("Y") is not the answer.
    """
    ids: list[int] = []
    for s in spellings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) != 1 or enc[0] in ids:
            continue
        if classify_answer_token(tokenizer.decode(enc)) == classify_answer_token(s):
            ids.append(int(enc[0]))
    return ids


def _torch_dtype(torch: Any, name: str, device: str) -> Any:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
