"""A closer look at each candidate: the crop verifier over the object detector's boxes, at full resolution.

The cascade's cheap proposal tier (``roadwork_detector``) sees a 320-px copy of the image; this stage takes
its boxes (the earlier stages' evidence, passed by the cascade), crops each candidate from the decoded image
at its own resolution with context around it, and asks a small classifier (``roadwork_verifier.onnx``: frozen
ImageNet EfficientNet-Lite0 features and a multinomial logistic regression, trained by
:mod:`workzone_train.verifier`) which work-zone object it is, a look-alike sign (``sign_other``) or
``none``. The score is the verified decision of its sidecar (:mod:`workzone.verified_evidence`):
what the detector proposed weighed against what the verifier confirmed, by class.

Model contract: input ``crops`` float32 [N, 3, S, S] in [0, 1]; output ``probs`` [N, C]. The sidecar gives
``crop_size``, ``context``, ``classes`` (C names), ``candidate_floor``, ``max_candidates``, ``decision`` and
``source_max_side`` (the longest side of the images it was trained on; crops of larger images are brought to that
detail, see :func:`~workzone.verified_evidence.candidate_crops`). An int8 graph's sidecar also carries
``quantisation`` (how it was made, from which fp32 graph, its parity): the default pipeline runs
``roadwork_verifier_int8.onnx`` on the CPU, and on CUDA the stage opens the fp32 graph it names instead
(:func:`float_graph_on_gpu`).

Backends (``backend``): onnxruntime on the CPU; on CUDA (``auto``) torch, where the crops are cut on the device from
the decoded images already there, with Pillow's pixels, and every candidate of a batch runs at once
(:class:`~workzone.accel.verifier.DeviceCropVerifier`). Both feed the same verified decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from workzone.errors import ModelFileError
from workzone.stages._model_stage import ModelStage
from workzone.stages._onnx import CpuRunParams, SessionPool, providers_for, read_sidecar
from workzone.stages._torch_backend import TorchBackendParams, open_runner, thresholded_precision, use_torch
from workzone.verified_evidence import (NONE_CLASSES, VerifiedDecision, candidate_crops, object_probability,
                                        verified_features_batch)
from workzone.types import Box, EarlierReports, Evidence, Image, StageOutput, StageReport

__all__ = ["ObjectVerifierParams", "ObjectVerifierStage", "float_graph_on_gpu", "float_graph"]


class ObjectVerifierParams(TorchBackendParams, CpuRunParams):
    model: str = Field(default="builtin:roadwork_verifier.onnx", description="ONNX file, or builtin:NAME")
    from_stage: str = Field(default="objects", description="the detector stage whose boxes are the candidates")
    candidate_floor: float | None = Field(default=None, ge=0.0, le=1.0,
                                          description="lowest detector score verified (default: the sidecar's)")
    max_candidates: int | None = Field(default=None, ge=1, le=64,
                                       description="most candidates verified per image (default: the sidecar's)")


class ObjectVerifierStage(ModelStage):
    """Verifies the detector's candidates on crops at the image's own resolution; the verified decision is the score.

    One onnxruntime run per image (its candidates), the images of a batch spread over the threads (see
    :class:`~workzone.stages._onnx.SessionPool`): one run over every candidate of a batch measured no faster on
    2 cores.
    """

    kind = "object_verifier"
    requires = ("onnxruntime",)
    tiny_params = {}
    Params = ObjectVerifierParams
    default_cost = 25.0
    warmup_batches = (1, 2)  # its SessionPool: the wide and the narrow session
    params: ObjectVerifierParams

    def _load_sync(self) -> None:
        device = self.context.device
        torch_params = self.params if use_torch(self.params.backend, device) else None
        path = self.context.resolve(self.params.model)
        # The torch backend runs the fp32 graph an int8 one was made from (its graph holds no quantised operators).
        path = float_graph(path) if torch_params is not None else float_graph_on_gpu(path, device)
        meta = read_sidecar(path)
        try:
            self._size = int(meta["crop_size"])
            self._context = float(meta["context"])
            self._max_side = int(meta["source_max_side"]) if meta.get("source_max_side") else None
            self._classes = tuple(meta["classes"])
            self._floor = float(meta["candidate_floor"] if self.params.candidate_floor is None
                                else self.params.candidate_floor)
            self._most = int(meta["max_candidates"] if self.params.max_candidates is None else self.params.max_candidates)
            self._decision = VerifiedDecision(meta["decision"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"stage {self.name!r}: {path.with_suffix('.json')}: {exc}") from exc
        if torch_params is not None:
            from workzone.accel.verifier import DeviceCropVerifier

            runner = open_runner(path, thresholded_precision(torch_params, device), device)
            self._model = DeviceCropVerifier(runner, size=self._size, context=self._context, max_side=self._max_side)
            return
        self._model = SessionPool(path, threads=self.params.threads, parallel=self.params.parallel,
                                  providers=providers_for(device, feature="the object verifier"),
                                  inputs=["crops"], hint="; train one with `workzone train verifier`",
                                  feature="the object verifier")

    def _torch_runner(self) -> Any:
        model = self._model
        return model.runner if model is not None and not isinstance(model, SessionPool) else None

    def _warmup_evidence(self, n: int) -> EarlierReports:
        # Sure candidates on each blank image, reported by the stage it reads: their crops go through the model. As
        # many as the stage verifies per image, so a warm-up batch of n images runs n x that many crops, the
        # runner's batch a served batch of n images makes (see _rows_per_image).
        boxes = tuple(Box("cone", 1.0, 4 * k, 8, 4 * k + 24, 56) for k in range(self._most))
        seen = StageReport(self.params.from_stage, "roadwork_detector", 0, 0.0, Evidence(boxes=boxes), 0.0)
        return [(seen,)] * n

    def _rows_per_image(self) -> int:
        return self._most

    def _predict_evidence_sync(self, batch: list[Image], evidence: EarlierReports | None) -> list[StageOutput]:
        """Every image's outcome: its candidates' crops and runs over the pool, then the verified decision."""
        candidates = [self._candidates(() if evidence is None else evidence[i]) for i in range(len(batch))]
        todo = [i for i, boxes in enumerate(candidates) if boxes]
        c = len(self._classes)
        if not todo:
            probs = np.zeros((0, c))
        elif isinstance(self._model, SessionPool):
            probs = np.concatenate(self._model.map(self._crops, _run_crops, [(batch[i], candidates[i]) for i in todo]))
        else:  # DeviceCropVerifier: every candidate of the batch in one run on the device
            flat = [b for i in todo for b in candidates[i]]  # type: ignore[union-attr]
            probs = self._model.probabilities([batch[i] for i in todo],
                                              np.array([(b.x1, b.y1, b.x2, b.y2) for b in flat], np.float64),
                                              [len(candidates[i]) for i in todo])  # type: ignore[arg-type]
        return self._verify(candidates, probs.reshape(-1, c))

    def _candidates(self, reports: Sequence[StageReport]) -> list[Box] | None:
        for rep in reports:
            if rep.stage == self.params.from_stage:
                if rep.error is not None or rep.log_odds is None:
                    return None
                boxes = sorted((b for b in rep.evidence.boxes if b.score >= self._floor), key=lambda b: -b.score)
                return boxes[: self._most]
        return None

    def _crops(self, item: tuple[Image, list[Box]]) -> np.ndarray:
        img, boxes = item
        xyxy = np.array([(b.x1, b.y1, b.x2, b.y2) for b in boxes], np.float64)
        return candidate_crops(img.pixels, xyxy, size=self._size, context=self._context, max_side=self._max_side)

    def _verify(self, candidates: list[list[Box] | None], p_all: np.ndarray) -> list[StageOutput]:
        """Each image's verified decision and evidence from its candidates (``None``: the detector did not report)
        and the verifier's probabilities of all of them, in order (M, C): the features and decisions of the whole
        batch in one pass of array operations, then each image's evidence."""
        boxes = [b or [] for b in candidates]
        counts = [len(b) for b in boxes]
        flat = [b for bs in boxes for b in bs]
        feats = verified_features_batch(np.array([b.score for b in flat], np.float64), [b.label for b in flat], p_all,
                                        counts, self._classes)
        zs = self._decision.scores(feats).tolist()
        why = self._decision.parts_of_rows(feats)
        tops, p_top = (p_all.argmax(1).tolist(), p_all.max(1).tolist()) if len(flat) else ([], [])
        p_obj = object_probability(p_all, self._classes).tolist()
        out, k = [], 0
        for i, bs in enumerate(boxes):
            if candidates[i] is None:
                out.append(StageOutput(None, Evidence(notes=(
                    f"verifier: stage {self.params.from_stage!r} did not report on this image; abstains",))))
                continue
            verified, notes = [], []
            # Plain floats from one conversion per batch, not a numpy scalar per candidate.
            for b, j in zip(bs, range(k, k + len(bs))):
                answer = self._classes[tops[j]]
                notes.append(f"{b.label} {b.score:.2f} at ({b.x1:.0f},{b.y1:.0f})-({b.x2:.0f},{b.y2:.0f}): "
                             f"verifier says {answer} {p_top[j]:.2f}")
                if answer not in NONE_CLASSES:
                    verified.append(Box(answer, min(1.0, max(0.0, p_obj[j])), b.x1, b.y1, b.x2, b.y2))
            k += len(bs)
            head = (f"verifier: {len(verified)} of {len(bs)} candidate(s) confirmed; decided by: "
                    + ", ".join(f"{n} {v:+.2f}" for n, v in why[i]))
            out.append(StageOutput(zs[i], Evidence(boxes=tuple(verified), notes=(head, *notes))))
        return out



def float_graph_on_gpu(path: Path, device: str) -> Path:
    """The graph to open on ``device``: on CUDA, :func:`float_graph`, else ``path``.

    Why: the int8 verifier is a saving measured on the CPU only (``benchmarks/results/int8_verifier.md``); on a GPU
    the fp32 graph costs little, and it is the graph the GPU path's parity was measured with.
    """
    return float_graph(path) if device.startswith("cuda") else path


def float_graph(path: Path) -> Path:
    """The fp32 graph an int8 one was made from (its sidecar's ``quantisation.float_model``, beside it), else
    ``path``."""
    made_from = (read_sidecar(path).get("quantisation") or {}).get("float_model")
    return path.with_name(made_from) if made_from else path


def _run_crops(session: Any, crops: np.ndarray) -> np.ndarray:
    return session.run(None, {"crops": crops})[0].astype(np.float64)
