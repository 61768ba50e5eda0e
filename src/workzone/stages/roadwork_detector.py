"""Embedded road-work object detector (cones, drums, posts, barriers, signs, workers, machines) with onnxruntime.

The model contract (``workzone/models/OBJECT_DETECTOR_CARD.md``; the network is
:mod:`workzone_train.detector`'s, trained by :mod:`workzone_train.object_train`, decoded here by
:func:`decode_detections`): input ``image`` float32 [N, 3, S, S] RGB in [0, 1], letterboxed; output ``out``
[N, K + 4, S/8, S/8] with peak-suppressed centre probabilities for K classes, centre offsets and box sizes.
A JSON sidecar next to the ``.onnx`` file gives ``input_size``, ``stride``, ``class_names`` and
``score_threshold``. The default model is the ten-class ``roadwork_objects.onnx``; the superseded one-class
``cone_detector.onnx`` still ships and loads when a pipeline names it (``model: builtin:cone_detector.onnx``).

Score: when the sidecar carries a ``decision`` block (:mod:`workzone.object_evidence`), the
log-odds of a logistic regression over summaries of the detected objects, fitted on out-of-fold
detections; otherwise the noisy-OR of the top ``top_k`` box confidences, ``p = 1 - prod(1 - s_i)``,
as log-odds (monotone in every box's confidence, so fusion can learn one weight for it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from workzone.errors import ModelFileError
from workzone.io.images import resize_for_model
from workzone.stages._onnx import CpuRunParams, Parallel, SessionPool, providers_for, read_sidecar
from workzone.stages._torch_backend import TorchBackendParams, open_runner, thresholded_precision, use_torch
from workzone.stages._model_stage import ModelStage
from workzone.object_evidence import COUNT_AT, DETECTION_FLOOR, LOGIT_CLIP, MAX_DETECTIONS, ObjectDecision
from workzone.types import Box, Evidence, Image, StageOutput, logit

__all__ = ["RoadworkDetectorParams", "RoadworkDetectorStage", "ObjectDetectorRunner", "decode_detections", "STRIDE",
           "runs_of"]


#: Output stride of the exported heat map.
STRIDE = 8
#: Class names of a sidecar that lists none: only the one-class cone detector's early sidecars lack them.
_UNNAMED_CLASSES = ["cone"]


class RoadworkDetectorParams(TorchBackendParams, CpuRunParams):
    model: str = Field(default="builtin:roadwork_objects.onnx", description="ONNX file, or builtin:NAME")
    input_size: int | None = Field(default=None, ge=64, le=2048, description="override the sidecar's input size (multiple of 32)")
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0,
                                          description="lowest box confidence reported as evidence (default: sidecar's)")
    top_k: int = Field(default=3, ge=1, le=50, description="boxes pooled by noisy-OR into the score")
    min_pool_score: float = Field(default=0.02, ge=0.0, le=1.0, description="boxes below this do not enter the pool")
    max_boxes: int = Field(default=20, ge=1, le=300, description="most boxes reported as evidence")
    # One image per run: on the 2-core machine runs of 4 used more CPU per image than runs of 1 (same outputs;
    # benchmarks/results/bench_cpu.md).
    batch_size: int = Field(default=1, ge=1, le=256, description="images per onnxruntime run (the torch "
                                                                 "backend runs max_batch)")


class ObjectDetectorRunner:
    """The ONNX detector with its pre- and post-processing, shared by the stage and the evaluator.

    Args:
        path: the ``.onnx`` file; its ``.json`` sidecar is read when present.
        input_size: overrides the sidecar's input size.
        threads: CPU threads of the onnxruntime runs (0 = all cores).
        parallel: how runs use them (see :class:`~workzone.stages._onnx.SessionPool`).
        providers: onnxruntime providers (default CPU).
        torch_params: run the graph through torch with these backend params instead of onnxruntime.
        device: the torch backend's device.
    """

    def __init__(self, path: str | Path, *, input_size: int | None = None, threads: int = 0,
                 providers: Sequence[str] = ("CPUExecutionProvider",),
                 torch_params: TorchBackendParams | None = None, device: str = "cpu",
                 parallel: Parallel = "images") -> None:
        path = Path(path)
        self.sessions: SessionPool | None = None
        self.torch_runner = None
        self.device_path: Any = None
        if torch_params is not None:
            self.torch_runner = open_runner(path, thresholded_precision(torch_params, device), device)
        self.meta = read_sidecar(path)
        native = int(self.meta.get("input_size", 448))
        self.size = int(input_size or native)
        if self.size % 32:
            raise ModelFileError(f"{path}: input size must be a multiple of 32, got {self.size}")
        if torch_params is None:
            # Height and width fixed at the one size this runner feeds: the graph is exported with dynamic axes,
            # which left free cost about twice the CPU per image (benchmarks/results/dynamic_axes.md).
            self.sessions = SessionPool(path, threads=threads, parallel=parallel, providers=providers, inputs=["image"],
                                        spatial=self.size, hint="; train one with `workzone train objects-loso`",
                                        feature="the object detector")
        self.stride = int(self.meta.get("stride", 8))
        self.class_names: list[str] = list(self.meta.get("class_names", _UNNAMED_CLASSES))
        self.score_threshold = float(self.meta.get("score_threshold", 0.3))
        # A model trained (and its decision fitted) on shrunk JPEG copies sees images so treated first:
        # see _as_trained. Absent, 0 or null: no such step.
        self.source_max_side = int(self.meta.get("source_max_side") or 0) or None
        self.source_jpeg_quality = int(self.meta.get("source_jpeg_quality") or 0) or None
        spec = self.meta.get("decision")
        if self.size != native and spec is not None:
            # A decision reads box scores and counts, which change with the input size (a 224-px glance
            # finds fewer and weaker boxes than the 384 px it was fitted at): another size needs its own fit.
            spec = (self.meta.get("decisions_by_input_size") or {}).get(str(self.size))
            if spec is None:
                raise ModelFileError(
                    f"{path}: its decision was fitted on detections at {native} px, and it has none for input size "
                    f"{self.size} (sidecar key 'decisions_by_input_size'); fit one on out-of-fold detections at that "
                    "size (`workzone train objects-oof --size ...`, then `workzone train loso-scores "
                    "--glance-detections ...`) or leave input_size unset")
        try:
            self.decision = ObjectDecision(spec, self.class_names) if spec is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: sidecar decision block for input size {self.size}: {exc}") from exc
        if self.torch_runner is not None:
            from workzone.accel.objects import DeviceObjectDetector

            # The whole decision on the torch device: as-trained treatment, letterbox, network, boxes, decision.
            self.device_path = DeviceObjectDetector(
                self.torch_runner, size=self.size, stride=self.stride, num_classes=len(self.class_names),
                source_max_side=self.source_max_side, source_jpeg_quality=self.source_jpeg_quality,
                decision=self.decision, count_at=COUNT_AT, logit_clip=LOGIT_CLIP)

    @property
    def session(self) -> Any:
        """The onnxruntime session over every thread (``None`` on the torch backend)."""
        return None if self.sessions is None else self.sessions.wide

    def detect(self, images: Sequence[np.ndarray | Image], *, score_threshold: float = 0.02, max_detections: int = 50,
               batch_size: int = 1) -> list[np.ndarray]:
        """Detect work-zone objects.

        Args:
            images: uint8 RGB arrays (H, W, 3), or images (pixels already on the torch device stay there).
            score_threshold: lowest confidence returned.
            max_detections: most boxes per image.
            batch_size: images per session run.

        Returns:
            Per image, (D, 6) rows ``x1, y1, x2, y2, score, class`` in that image's pixels, by
            falling score.
        """
        return self.decide(images, score_threshold=score_threshold, max_detections=max_detections,
                           batch_size=batch_size)[0]

    def decide(self, images: Sequence[np.ndarray | Image], *, score_threshold: float = 0.02, max_detections: int = 50,
               batch_size: int = 1) -> tuple[list[np.ndarray], list[float] | None, list[str] | None]:
        """:meth:`detect`, the sidecar decision's log-odds per image, and per image the note naming the
        features that decided it (both ``None`` without a decision block).

        On the torch backend all three are computed on its device and copied back once per batch.
        """
        items = [im if isinstance(im, Image) else Image(im) for im in images]
        if self.device_path is not None:
            dets, z, parts = self.device_path.detect(items, floor=score_threshold,
                                                     max_detections=max_detections).to_host()
            if z is None or parts is None or self.decision is None:
                return dets, None, None
            names = self.decision.feature_names
            top = np.argsort(-np.abs(parts), axis=1, kind="stable")[:, :3]  # one sort for the batch
            return dets, z.tolist(), [_decided_by([(names[j], v) for j, v in zip(t, p[t].tolist())])
                                      for t, p in zip(top.tolist(), parts)]
        raws = self.sessions.map(self._inputs, _run_image, runs_of(items, batch_size))  # type: ignore[union-attr]
        out: list[np.ndarray] = []
        for im, o in zip(items, (o for raw in raws for o in raw)):
            det = decode_detections(o, score_threshold=score_threshold, max_detections=max_detections,
                                    stride=self.stride, num_classes=len(self.class_names))
            out.append(_to_image_coords(det, im.width, im.height, self.size))
        if self.decision is None:
            return out, None, None
        return (out, [self.decision.log_odds(d, float(im.height)) for d, im in zip(out, items)],
                [_decided_by(self.decision.contributions(d, float(im.height))) for d, im in zip(out, items)])


    def close(self) -> None:
        """Stop the onnxruntime worker threads."""
        if self.sessions is not None:
            self.sessions.close()

    def _inputs(self, images: Sequence[Image]) -> np.ndarray:
        """The onnxruntime batch [N, 3, S, S]: each image as trained (see _as_trained), letterboxed.

        Box coordinates map back through the letterbox by aspect ratio, so the shrunk copies' boxes land
        on the original images.
        """
        x = np.empty((len(images), 3, self.size, self.size), np.float32)
        for j, im in enumerate(images):
            resize_for_model(self._as_trained(im.pixels) if self._shrinks else im.pixels, self.size, "letterbox", out=x[j])
        return x

    @property
    def _shrinks(self) -> bool:
        return self.source_max_side is not None or self.source_jpeg_quality is not None

    def _as_trained(self, px: np.ndarray) -> Any:
        """The image as the model was trained on it: longest side at most ``source_max_side`` (Lanczos),
        then through JPEG at ``source_jpeg_quality``.

        Why: the sidecar names how the training copies were made, and the decision was fitted on
        detections of such copies. Measured on CamVid dev frames, the same frames in their original
        sharpness raised the decision's false alarms from 2 % to 29 %.

        Returns the PIL image (letterboxing takes it as it is: no array round trip).
        """
        import io

        from PIL import Image as PILImage

        im = PILImage.fromarray(np.ascontiguousarray(px))
        h, w = px.shape[:2]
        if self.source_max_side is not None and max(h, w) > self.source_max_side:
            s = self.source_max_side / max(h, w)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), PILImage.LANCZOS)
        if self.source_jpeg_quality is not None:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=self.source_jpeg_quality)
            buf.seek(0)
            im = PILImage.open(buf)
            if im.mode != "RGB":  # a converted copy only when needed (an RGB image's JPEG decodes as RGB)
                im = im.convert("RGB")
        return im


class RoadworkDetectorStage(ModelStage):
    """Finds work-zone objects with the embedded detector; the score is its sidecar's decision (or a box pool).

    The model (``_model``) is an :class:`ObjectDetectorRunner`; :class:`ModelStage` loads, warms up (blank
    images through the whole path, on both sessions of its pool) and closes it.
    """

    kind = "roadwork_detector"
    requires = ("onnxruntime",)
    tiny_params = {}
    Params = RoadworkDetectorParams
    default_cost = 60.0
    warmup_batches = (1, 2)  # the runner's SessionPool: its wide and its narrow session
    params: RoadworkDetectorParams

    def _load_sync(self) -> None:
        path = self.context.resolve(self.params.model)
        device = self.context.device
        torch_params = self.params if use_torch(self.params.backend, device) else None
        providers = ["CPUExecutionProvider"] if torch_params else providers_for(device, feature="the object detector")
        try:
            self._model = ObjectDetectorRunner(path, input_size=self.params.input_size, threads=self.params.threads,
                                               providers=providers, torch_params=torch_params, device=device,
                                               parallel=self.params.parallel)
        except ModelFileError as exc:
            raise ModelFileError(f"stage {self.name!r}: {exc}") from exc

    def _torch_runner(self) -> Any:
        return None if self._model is None else self._model.torch_runner

    def _predict_sync(self, batch: list[Image]) -> list[StageOutput]:
        p = self.params
        runner: ObjectDetectorRunner = self._model
        floor = min(p.min_pool_score, runner.score_threshold if p.score_threshold is None else p.score_threshold)
        most = max(p.max_boxes, p.top_k)
        if runner.decision is not None:
            floor, most = min(floor, DETECTION_FLOOR), max(most, MAX_DETECTIONS)
        dets, zs, why = runner.decide(batch, score_threshold=floor, max_detections=most, batch_size=p.batch_size)
        report_at = runner.score_threshold if p.score_threshold is None else p.score_threshold
        return [self._summarise(d, runner, report_at, None if zs is None else zs[i], None if why is None else why[i])
                for i, d in enumerate(dets)]

    def _summarise(self, det: np.ndarray, runner: ObjectDetectorRunner, report_at: float, z: float | None,
                   why: str | None) -> StageOutput:
        p = self.params
        names = runner.class_names
        extra: tuple[str, ...] = (why,) if z is not None and why is not None else ()
        if z is None:
            z = pool_scores(det[:, 4][det[:, 4] >= p.min_pool_score][: p.top_k])
        shown = det[: p.max_boxes]
        # One tolist() per image, not a numpy scalar per field: a GPU batch summarises thousands of images.
        boxes = tuple(Box(names[int(c)] if int(c) < len(names) else str(int(c)), min(1.0, max(0.0, s)),
                          x1, y1, max(x1, x2), max(y1, y2))
                      for x1, y1, x2, y2, s, c in shown[shown[:, 4] >= report_at].tolist())
        notes = (f"{len(boxes)} box(es) >= {report_at:.2f}; top score {float(det[0, 4]) if len(det) else 0.0:.3f}",) + extra
        return StageOutput(log_odds=z, evidence=Evidence(boxes=boxes, notes=notes))


def runs_of(items: Sequence[Any], batch_size: int) -> list[Sequence[Any]]:
    """The onnxruntime runs of a batch: at most ``batch_size`` images each, and at least two runs when there are
    4+ images, so one run's inputs are made (Pillow releases the GIL) while onnxruntime runs another.

    Examples:
        >>> [len(r) for r in runs_of(list(range(8)), 8)], [len(r) for r in runs_of(list(range(3)), 1)]
        ([4, 4], [1, 1, 1])
    """
    n = len(items)
    step = max(1, min(batch_size, -(-n // 2) if n >= 4 else n))
    return [items[i:i + step] for i in range(0, n, step)]


def _run_image(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"image": x})[0]


def _decided_by(parts: Sequence[tuple[str, float]]) -> str:
    return "decided by: " + ", ".join(f"{n} {v:+.2f}" for n, v in parts)


def pool_scores(scores: np.ndarray, floor: float = 1e-4) -> float:
    """Noisy-OR of box confidences as log-odds: ``logit(1 - prod(1 - s))``, bounded by ``floor``.

    With no box the result is ``logit(floor)`` (strong evidence against, still finite).

    Examples:
        >>> round(pool_scores(np.array([0.5, 0.5])), 3)
        1.099
    """
    s = np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    p = 1.0 - float(np.prod(1.0 - s)) if s.size else 0.0
    return logit(min(max(p, floor), 1.0 - floor))


def _to_image_coords(det: np.ndarray, w: int, h: int, size: int) -> np.ndarray:
    # Undo the letterbox of resize_for_model: scale by the longer side, centred padding.
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    padx, pady = (size - nw) // 2, (size - nh) // 2
    out = det.copy()
    out[:, [0, 2]] = np.clip((det[:, [0, 2]] - padx) * (w / nw), 0, w)
    out[:, [1, 3]] = np.clip((det[:, [1, 3]] - pady) * (h / nh), 0, h)
    return out


def decode_detections(out: np.ndarray, *, score_threshold: float = 0.1, max_detections: int = 50,
                      stride: int = STRIDE, num_classes: int | None = None) -> np.ndarray:
    """Boxes from one image's exported output.

    Args:
        out: (K + 4, G, G) the exported layout for one image.
        score_threshold: lowest peak probability kept.
        max_detections: most boxes kept (highest scores first).
        stride: output stride.
        num_classes: K (default: the channels before the four box channels, ``out.shape[0] - 4``).

    Returns:
        (D, 6) float32 rows ``x1, y1, x2, y2, score, class`` in input pixels, by falling score.

    Examples:
        >>> out = np.zeros((5, 4, 4), np.float32); out[0, 1, 2] = 0.5; out[3:5, 1, 2] = 8
        >>> decode_detections(out).tolist()  # the peak in cell (x=2, y=1), 8 x 8 px
        [[12.0, 4.0, 20.0, 12.0, 0.5, 0.0]]
    """
    if num_classes is None:
        num_classes = out.shape[0] - 4
    heat = out[:num_classes].reshape(-1)
    g_h, g_w = out.shape[1:]
    k = min(max_detections, heat.size)
    idx = np.argpartition(-heat, k - 1)[:k] if k < heat.size else np.arange(heat.size)
    idx = idx[heat[idx] >= score_threshold]
    idx = idx[np.argsort(-heat[idx], kind="stable")]
    cls, rem = np.divmod(idx, g_h * g_w)
    gy, gx = np.divmod(rem, g_w)
    dx, dy = out[num_classes, gy, gx], out[num_classes + 1, gy, gx]
    w, h = out[num_classes + 2, gy, gx], out[num_classes + 3, gy, gx]
    cx, cy = (gx + dx) * stride, (gy + dy) * stride
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, heat[idx], cls], axis=1).astype(np.float32)
