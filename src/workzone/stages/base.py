"""The stage interface every backend implements.

A stage receives a batch of decoded images and returns, per image, a log-odds score for road work
(or ``None`` to abstain) plus the evidence behind it. The cascade measures latency, enforces
timeouts and isolates failures, so stages only do their one job.

Lifecycle: ``__init__`` (cheap, validates params) -> ``await load()`` (reads weights, opens
clients) -> ``await warmup()`` -> many ``await predict(batch)`` -> ``await aclose()``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from workzone.errors import StageError
from workzone.types import EarlierReports, Image, StageOutput

__all__ = ["Stage", "StageParams", "StageContext", "RunsOn"]


class StageParams(BaseModel):
    """Base of every stage's ``Params``: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


@dataclass(frozen=True)
class StageContext:
    """What a stage may depend on besides its params (injected, never global).

    Attributes:
        base_dir: folder of the pipeline file; relative paths in params resolve against it.
        device: preferred compute device ("cpu", "cuda", "cuda:1", ...).
        extras: dependencies injected by the host (e.g. a shared HTTP client).
    """

    base_dir: Path = field(default_factory=Path.cwd)
    device: str = "cpu"
    extras: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str | Path) -> Path:
        """Resolve a path from params: ``builtin:NAME`` is a file shipped in ``workzone/models``."""
        text = str(path)
        if text.startswith("builtin:"):
            return Path(__file__).resolve().parent.parent / "models" / text.removeprefix("builtin:")
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


RunsOn = Literal["cpu", "gpu", "engine"]


class Stage(ABC):
    """One scorer in the cascade.

    Subclasses set ``kind`` and ``Params`` and implement :meth:`predict`. CPU-bound work belongs in
    :meth:`run_blocking` so stages in the same tier overlap.

    Everything else the project knows about a kind is declared here, on the class, and read from the
    registry by ``workzone check`` (``extra``, ``requires``), ``workzone plan`` (``runs_on``,
    :meth:`planned_model`, :meth:`bytes_per_param`), the config (:meth:`nested_specs`) and the
    contract test (``tiny_params``).

    Attributes:
        name: the stage's name in the pipeline (unique).
        params: validated parameters.
        cost: declared cost per image in milliseconds of the reference machine; the tuner uses it
            to trade accuracy for speed.
    """

    kind: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams
    #: Default cost per image (ms on the 2-core reference machine) when the pipeline gives none.
    default_cost: ClassVar[float] = 10.0
    #: The pip extra that installs what this kind imports ("default": the base install).
    extra: ClassVar[str] = "default"
    #: Modules the kind imports when it loads; ``workzone check`` looks them up without importing them.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Where it runs: ``cpu`` (in-process), ``gpu`` (in-process, on a GPU when there is one) or
    #: ``engine`` (a model behind an OpenAI-compatible server that ``workzone plan`` sizes and launches).
    runs_on: ClassVar[RunsOn] = "cpu"
    #: Params of a tiny variant that loads and predicts in a second on a CPU (the contract test runs
    #: every registered kind with them). A string ``"tiny:NAME"`` stands for a tiny artefact the
    #: test builds (``tiny:yolov8.onnx``, ``tiny:owlv2``, ``tiny:openai`` for a loopback server, ...).
    tiny_params: ClassVar[Mapping[str, Any] | None] = None
    #: Host a ``model`` that is not a local file is downloaded from at load time (``None``: never).
    downloads_from: ClassVar[str | None] = None

    @classmethod
    def packaged_model(cls, model: str) -> bool:
        """Whether ``model`` names a model that ships with the kind's library (no file, no download)."""
        return False

    @classmethod
    def cached_model(cls, model: str) -> bool:
        """Whether a model that would be downloaded is already in the library's local cache."""
        return False

    @classmethod
    def nested_specs(cls, params: StageParams) -> list[tuple[str, dict[str, Any]]]:
        """Stages this one builds inside itself, as ``(name suffix, raw entry with its kind)``.

        They run in the same process and on the same device (``hf_depth`` wraps a detector), so
        ``workzone check`` checks their files and ``workzone plan`` adds their memory.
        """
        return []

    @classmethod
    def planned_model(cls, params: StageParams) -> str:
        """The model id ``workzone plan`` looks up in its table."""
        return str(getattr(params, "model", "") or cls.kind)

    @classmethod
    def bytes_per_param(cls, params: StageParams) -> float:
        """Bytes per weight on a GPU (``workzone plan``): half precision unless params say float32."""
        return 4.0 if str(getattr(params, "dtype", "auto")) == "float32" else 2.0

    def __init__(self, name: str, params: StageParams, context: StageContext | None = None,
                 cost: float | None = None) -> None:
        if not isinstance(params, self.Params):
            raise TypeError(f"stage {name!r}: expected params of type {self.Params.__name__}, got {type(params).__name__}")
        self.name = name
        self.params = params
        self.context = context or StageContext()
        self.cost = float(self.default_cost if cost is None else cost)

    async def load(self) -> None:
        """Load weights, open clients. Called once before the first predict."""

    async def warmup(self) -> None:
        """Run a throw-away prediction so the first real request is not slow."""

    async def warm_batches(self, largest: int) -> None:
        """Run throw-away batches so that no batch of up to ``largest`` images (what a server sends at
        most) meets a shape for the first time while serving (a compile, a kernel choice). Default:
        nothing (a stage without such first runs)."""

    @property
    def cold_runs(self) -> int:
        """Runs since loading that met a shape for the first time (their time is not what their images
        cost: a server charges no client for a batch during which this grew). Default: 0."""
        return 0

    @abstractmethod
    async def predict(self, batch: Sequence[Image], evidence: EarlierReports | None = None) -> list[StageOutput]:
        """Score a batch of images.

        Returns:
            One :class:`StageOutput` per input image, in order.
        """

    async def aclose(self) -> None:
        """Release resources. Safe to call twice."""

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``GET /v1/pipeline`` and ``workzone check``."""
        return {"name": self.name, "kind": self.kind, "cost": self.cost,
                "params": self.params.model_dump(mode="json")}

    def require_loaded(self, thing: Any) -> Any:
        """``thing`` (a model, session or client that :meth:`load` sets), or :class:`StageError` if unset."""
        if thing is None:
            raise StageError(self.name, "predict() called before load()")
        return thing

    @staticmethod
    async def run_blocking(fn: Any, *args: Any) -> Any:
        """Run CPU-bound or blocking ``fn(*args)`` in a worker thread."""
        return await asyncio.to_thread(fn, *args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
