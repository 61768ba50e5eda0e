"""Plumbing shared by the Hugging Face transformers stages (classifier, CLIP, OWLv2, depth).

Params, loading, device handling and the model-plus-processor lifecycle (:class:`HFStage`) live
here; each stage keeps its own pre/post-processing. Nothing heavy is imported at module import.
"""

from __future__ import annotations

import threading
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from pydantic import Field

from workzone._optional import require
from workzone.errors import ModelFileError
from workzone.stages._model_stage import ModelStage, torch_device
from workzone.stages.base import Stage, StageParams
from workzone.types import Image

# transformers builds a model on the meta device under process-wide init patches: two
# from_pretrained calls in two worker threads (the cascade loads its stages concurrently) can see
# each other's patches and leave weights on "meta". Loading is serialised; inference is not.
_LOAD_LOCK = threading.Lock()

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["HFParams", "HFStage", "load_hf", "pick_device", "to_pil", "model_source", "chunks"]

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


class HFParams(StageParams):
    """Params every transformers stage has."""

    model: str = Field(description="Hugging Face hub id, or a local directory saved with save_pretrained")
    revision: str | None = Field(default=None, description="hub revision (branch, tag or commit) to pin")
    dtype: Dtype = Field(default="auto", description="weights dtype; auto = float16 on CUDA, float32 on CPU")
    batch_size: int = Field(default=8, ge=1, le=256)


class HFStage(ModelStage):
    """A :class:`ModelStage` whose model comes with a transformers processor (``self._processor``).

    ``_load_sync`` typically ends with ``self._model, self._processor, self._device = load_hf(...)``.
    """

    extra = "hf"
    requires = ("transformers", "torch")
    runs_on = "gpu"
    downloads_from = "huggingface.co"

    @classmethod
    def cached_model(cls, model: str) -> bool:
        if find_spec("huggingface_hub") is None:
            return False
        from huggingface_hub.constants import HF_HUB_CACHE

        return (Path(HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "snapshots").is_dir()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._processor: Any = None

    async def aclose(self) -> None:
        self._model = None
        self._processor = None


def model_source(stage: Stage, model: str) -> str:
    """A local directory (resolved against the pipeline file) if one exists, else the hub id.

    Raises:
        ModelFileError: ``model`` looks like a path (starts with ``.``, ``/``, ``~`` or names a
            ``builtin:`` file) but nothing is there.
    """
    local = stage.context.resolve(model)
    if local.is_dir():
        return str(local)
    if model.startswith((".", "/", "~", "builtin:")) or Path(model).suffix in (".pt", ".bin", ".safetensors"):
        raise ModelFileError(f"stage {stage.name!r}: model directory {local} does not exist")
    return model


def pick_device(stage: Stage) -> str:
    """The context's device if torch can use it, else ``cpu``."""
    return torch_device(stage, "hf", "transformers stages")


def load_hf(stage: Stage, params: HFParams, model_cls: str, processor_cls: str,
            **model_kwargs: Any) -> tuple[Any, Any, str]:
    """Load a transformers model and its processor, on the stage's device, in eval mode.

    Args:
        stage: the stage (for its name, context and device).
        params: its params (model, revision, dtype).
        model_cls: class name in :mod:`transformers`, e.g. ``"AutoModelForImageClassification"``.
        processor_cls: e.g. ``"AutoImageProcessor"`` or ``"AutoProcessor"``.
        **model_kwargs: passed to ``from_pretrained`` of the model.

    Returns:
        (model, processor, device).

    Raises:
        MissingExtraError: transformers or torch is not installed.
        ModelFileError: the model cannot be found or read (offline without a cache, a typo, a
            directory without config.json).
    """
    transformers = require("transformers", "hf", "transformers stages")
    torch = require("torch", "hf", "transformers stages")
    source = model_source(stage, params.model)
    device = pick_device(stage)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(params.dtype)
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        with _LOAD_LOCK:
            processor = getattr(transformers, processor_cls).from_pretrained(source, revision=params.revision)
            model = getattr(transformers, model_cls).from_pretrained(source, revision=params.revision, dtype=dtype,
                                                                   **model_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        # transformers raises OSError for missing files / no network, ValueError for unknown
        # architectures: both mean "this model cannot be used here", which is a model-file problem.
        raise ModelFileError(
            f"stage {stage.name!r}: cannot load {params.model!r} with {model_cls}: {exc}. Pass a local "
            "directory saved with save_pretrained, or pre-download the hub id (HF_HOME cache)."
        ) from exc
    model.to(device).eval()
    return model, processor, device


def to_pil(batch: Sequence[Image]) -> list["PILImage"]:
    """RGB PIL images of a batch (processors want PIL or numpy; PIL keeps the channel order unambiguous)."""
    from PIL import Image as PILImageModule

    return [PILImageModule.fromarray(img.pixels) for img in batch]


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    return [items[i:i + size] for i in range(0, len(items), size)]
