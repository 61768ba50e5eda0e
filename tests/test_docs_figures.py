"""Every figure docs/ and the README quote from a results file is read from that file here, so a new default
(or a re-run benchmark) cannot leave old numbers behind.

Each :class:`Quote` names a document, the words around its figures (``{}`` where each figure goes) and, for
each figure, how to read it from its source: a table cell or a sentence of a file in ``benchmarks/results/``,
a value of a results JSON, or the ``tuning`` block ``workzone tune`` wrote into a shipped pipeline. The test
renders the words with the figures read now and looks for them in the document (line breaks and repeated
spaces do not matter). When a results file changes, the quotes that disagree fail with both texts.

The sweep at the end keeps the list honest: a paragraph of docs/ or the README that links a results file and
states a decimal figure must hold at least one registered quote, or be listed as quoting none.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PIPELINES = REPO / "src" / "workzone" / "pipelines"


# -- readers: each returns a figure from a source file ----------------------------------------------------


def _table_rows(name: str):
    """(header, cells) of every body row of every markdown table in a results file."""
    header: list[str] | None = None
    for line in (RESULTS / name).read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        yield header, cells


def table_cell(name: str, row: str, column: str) -> str:
    """The cell of a results markdown table at ``row`` (its first cell without ``*`` and a ``[...]`` note) and ``column``."""
    for header, cells in _table_rows(name):
        if cells[0].replace("*", "").split(" [")[0] == row and column in header:  # "pooled MCC [95 % CI]"
            return cells[header.index(column)]
    raise AssertionError(f"{name}: no table row {row!r} with a column {column!r}")


def named_share(source: str, kind: str, band: str) -> str:
    """hand_labels.md: the share of a source's named candidates of one kind that the verifier accepts, in a band."""
    for header, cells in _table_rows("hand_labels.md"):
        if header[:2] == ["source", "named"] and cells[:2] == [source, kind]:
            return cells[header.index(band)].split(" (")[0]
    raise AssertionError(f"hand_labels.md: no row {source!r} / {kind!r}")


def precision_cell(precision: str, decode: str, column: str) -> str:
    """gpu_detector_precision.md: a cell of the row of one detector precision and decoder (percent as "99.6 %")."""
    for header, cells in _table_rows("gpu_detector_precision.md"):
        if header[:2] == ["detector precision", "decode"] and cells[:2] == [precision, decode]:
            return cells[header.index(column)].replace("%", " %")
    raise AssertionError(f"gpu_detector_precision.md: no row {precision!r} / {decode!r}")


def bench_cell(name: str, run: str, size: str, column: str, *, notes_has: str = "", notes_lacks: str = "") -> str:
    """A cell of a ``workzone bench`` table: the row of that run and input whose notes hold ``notes_has`` and not
    ``notes_lacks`` (one run name appears once per input, and the bare detector row once per run scheme)."""
    for header, cells in _table_rows(name):
        if header[:3] == ["run", "device", "input"] and cells[0] == run and cells[2] == size:
            notes = cells[header.index("notes")]
            if notes_has in notes and not (notes_lacks and notes_lacks in notes):
                return cells[header.index(column)]
    raise AssertionError(f"{name}: no {run!r} row for {size!r} with notes holding {notes_has!r}")


BARE_DETECTOR = "object detector, bare onnxruntime session (inputs ready)"
HTTP_3000 = "HTTP /v1/detect at 3000 req/s (open loop, loopback)"
CTX2, CTX3 = "frozen MLP, context 2 (class-aware)", "frozen MLP, context 3 (class-aware)"
HTTP_HELD = "HTTP highest rate held with p99 <= 100 ms"
DEV_JPEGS = "roadwork-v1 dev JPEGs"


def same_bits_of_all() -> str:
    """The image count of cpu_parity.md, only when every image's probability was bit-identical."""
    n, same = (table_cell("cpu_parity.md", "shipped vs before", c) for c in ("images", "bit-identical probabilities"))
    assert n == same, f"cpu_parity.md: {same} of {n} probabilities bit-identical"
    return n


def numbers(text: str) -> list[str]:
    """The numbers in ``text``, as written (``"rec 0.78 [0.72, 0.82] (n 260)"`` -> ``["0.78", "0.72", "0.82", "260"]``)."""
    return re.findall(r"-?\d+(?:\.\d+)?", text)


def sentence(name: str, pattern: str, group: int = 1) -> str:
    """A figure stated in a results file's prose: ``group`` of the first match of ``pattern``."""
    m = re.search(pattern, (RESULTS / name).read_text(encoding="utf-8"))
    assert m, f"{name}: no text matching {pattern!r}"
    return m.group(group)


def json_value(name: str, dotted: str) -> Any:
    """A value of a results JSON by dotted path (``overall.mcc``)."""
    value: Any = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    for key in dotted.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def tuning(pipeline: str, dotted: str) -> Any:
    """A value of a shipped pipeline's ``tuning`` block (what ``workzone tune`` measured and recorded)."""
    value: Any = yaml.safe_load((PIPELINES / f"{pipeline}.yaml").read_text(encoding="utf-8"))["tuning"]
    for key in dotted.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def fixed(value: Any, places: int) -> str:
    return f"{float(value):.{places}f}"


def percent(value: Any, places: int = 1) -> str:
    return f"{100 * float(value):.{places}f} %"


# -- what the documents quote -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    """Words of ``doc`` with ``{}`` for each figure, and how to read each figure from ``source``."""

    doc: str
    words: str
    source: str
    figures: tuple[Callable[[], str], ...]

    def render(self) -> str:
        return self.words.format(*(f() for f in self.figures))


LOSO = "loso_ten_sources.md"  # the previous default's table: the whole-image comparison is quoted from it
SHIPPED = "default (signs+objects)"
LOSO11 = "loso_eleven_sources.md"
LOSO11_0612 = "loso_eleven_sources_2026-12-06.md"
SHIPPED11 = "default (signs+verify)"
VERIFY = "verify (fine-tuned, class-aware)"
INT8 = "int8_verifier.md"


def loso(row: str, column: str = SHIPPED, k: int = 0, places: int | None = None) -> Callable[[], str]:
    """The ``k``-th number of a cell of the ten-source table (rounded to ``places`` when given)."""
    def read() -> str:
        value = numbers(table_cell(LOSO, row, column))[k]
        return value if places is None else fixed(value, places)
    return read


def loso11(row: str, column: str = SHIPPED11, k: int = 0, places: int | None = None,
           table: str = LOSO11) -> Callable[[], str]:
    """The ``k``-th number of a cell of the eleven-source table (rounded to ``places`` when given); ``table``: another
    run's table of the same layout (LOSO11_0612, the 2026-12-06 run with the frozen verifier's columns)."""
    def read() -> str:
        value = numbers(table_cell(table, row, column))[k]
        return value if places is None else fixed(value, places)
    return read


def router_best_cost(router: bool) -> Callable[[], str]:
    """Lowest mean cost (ms) at which the fixed order (or the router) reaches the best fixed-order MCC."""
    def read() -> str:
        rows = [ln.strip().strip("|").split("|") for ln in (RESULTS / "router_vs_fixed.md").read_text().splitlines()
                if re.match(r"\|\s*[0-9.]+ / [0-9.]+\s*\|", ln)]
        best = sentence("router_vs_fixed.md", r"best fixed-order MCC \(([0-9.]+) at")
        col_mcc, col_cost = (3, 4) if router else (1, 2)
        costs = [float(r[col_cost]) for r in rows if r[col_mcc].strip() == best]
        return fixed(min(costs), 1)
    return read


def capacity_cores() -> str:
    """Cores for 2,300 images/s at the default's stored cost (two threads per image), rounded to tens."""
    per_core = 1000.0 / float(tuning("default", "mean_cost_ms")) / 2
    return str(int(round(2300 / per_core, -1)))


QUOTES: list[Quote] = [
    # README, "What it scores": the eleven-source table.
    Quote("README.md", "the default's stages, fusion cross-fitted: MCC **{}** [{}, {}], ROC-AUC {}", LOSO11,
          (loso11("pooled MCC", places=3), loso11("pooled MCC", k=1), loso11("pooled MCC", k=2),
           loso11("ROC-AUC", places=3))),
    Quote("README.md", "the verifier's decision alone **{}** [{}, {}], the detector alone {}", LOSO11,
          (loso11("pooled MCC", column=VERIFY, places=3), loso11("pooled MCC", column=VERIFY, k=1),
           loso11("pooled MCC", column=VERIFY, k=2), loso11("pooled MCC", column="objects", places=3))),
    Quote("README.md", "The whole cascade, its fusions and exits tuned without each fold: {} ([cascade_out_of_fold.md]"
                       "(benchmarks/results/cascade_out_of_fold.md); with its exits chosen in sample, as before this was "
                       "measured, {})", "cascade_out_of_fold.json, cascade_out_of_fold.md",
          (lambda: fixed(json_value("cascade_out_of_fold.json", "default.pooled_mcc"), 3),
           lambda: numbers(table_cell("cascade_out_of_fold.md", "pooled MCC", "default, exits chosen in sample"))[0])),
    Quote("README.md", "UK streets passed {}, US dashcam nights {}, German streets with every other sign {}, the US "
                       "dashcam work zones recalled {}, TraCon road work {}; highway-CCTV road work still {}", LOSO11,
          (loso11("CamVid"), loso11("nexar-eduardo"), loso11("gtsdb_scenes"), loso11("WMaia9-workzone"),
           loso11("TraCon"), loso11("qew-trafficcam"))),
    Quote("README.md", "The previous whole-image default scored {} here but {} on", LOSO,
          (lambda: sentence(LOSO, r"whole-image default scored ([0-9.]+) on dev"),
           lambda: sentence(LOSO, r"on dev and ([0-9.]+) on the hidden sources"))),
    # VERIFIER_CARD.md: the CPU-only path against the linear head and the fine-tuned network.
    Quote("src/workzone/models/VERIFIER_CARD.md", "pooled out-of-fold MCC {} against the linear head's {} and the "
                                                  "fine-tuned network's {}", LOSO11_0612,
          (loso11("pooled MCC", column="verify (frozen, MLP head)", places=3, table=LOSO11_0612),
           loso11("pooled MCC", column="verify (frozen, previous)", places=3, table=LOSO11_0612),
           loso11("pooled MCC", column=VERIFY, places=3, table=LOSO11_0612))),
    # VERIFIER_CARD.md: the verifier trained with the candidates named by eye (hand_labels.md's table).
    Quote("src/workzone/models/VERIFIER_CARD.md", "made it worse out of fold, pooled MCC {} against {}",
          "hand_labels.md",
          (lambda: table_cell("hand_labels.md", "pooled MCC", "verifier trained with the hand labels").split(" [")[0],
           lambda: table_cell("hand_labels.md", "pooled MCC", "default (shipped verifier)").split(" [")[0])),
    Quote("src/workzone/models/VERIFIER_CARD.md", "out of fold, the verifier accepts WMaia9's named work-zone objects "
          "{} of the time under 24 px and {} at 24-32 px, against {} from 64 px", "hand_labels.md",
          tuple((lambda c=c: named_share("WMaia9-workzone", "work-zone object", c))
                for c in ("under 24 px", "24-32 px", "64 px and more"))),
    # README: the dev split, from `workzone eval` on it.
    Quote("README.md", "MCC **{}** (recall {}, specificity {}, ROC-AUC {})", "eval_dev_default.json",
          (lambda: fixed(json_value("eval_dev_default.json", "overall.mcc"), 3),
           lambda: fixed(json_value("eval_dev_default.json", "overall.recall"), 3),
           lambda: fixed(json_value("eval_dev_default.json", "overall.specificity"), 3),
           lambda: fixed(json_value("eval_dev_default.json", "overall.roc_auc"), 3))),
    Quote("README.md", "about {} MB for the dev split", "eval_dev_default.md",
          (lambda: sentence("eval_dev_default.md", r"HTML report \(`--html`\) \| ([0-9.]+) MB"),)),
    # README: the cascade of the default, and its speed.
    Quote("README.md", "{} of images are decided after the detector and {} reach the verifier", "default.yaml tuning",
          (lambda: percent(tuning("default", "exit_rates.1"), 0), lambda: percent(tuning("default", "exit_rates.2"), 0))),
    Quote("README.md", "on the dev split the verifier sees {}", "eval_dev_default.json",
          (lambda: percent(json_value("eval_dev_default.json", "tier_exits.verify")),)),
    Quote("README.md", "the object detector {} ms per image, sign OCR {} ms and the verifier {} ms on 25 dev images",
          "default.yaml tuning",
          (lambda: str(round(float(tuning("default", "stage_cost_ms.objects")))),
           lambda: str(round(float(tuning("default", "stage_cost_ms.signs")))),
           lambda: str(round(float(tuning("default", "stage_cost_ms.verify")))))),
    # docs/gpu.md: default-gpu against the default, from their tuning blocks.
    Quote("docs/gpu.md", "which adds {} pooled MCC out of fold", "default.yaml tuning",
          (lambda: fixed(tuning("default", "contribution.signs.delta_mcc"), 3),)),
    Quote("docs/gpu.md", "decides {} of the eleven sources' images on its own", "default.yaml tuning",
          (lambda: percent(tuning("default", "exit_rates.0")),)),
    Quote("docs/gpu.md", "pooled MCC {} over the eleven sources, against the default's {}",
          "default-gpu.yaml, default.yaml",
          (lambda: fixed(tuning("default-gpu", "mcc"), 3), lambda: fixed(tuning("default", "mcc"), 3))),
    # docs/batch.md: the capacity plan.
    Quote("docs/batch.md", "the object detector {} ms and sign OCR {} ms per image, a mean of {} ms per image at its "
                           "exits. The OCR tier decides {} of the eleven sources' images on its own, so {} reach",
          "default.yaml tuning",
          (lambda: str(tuning("default", "stage_cost_ms.objects")), lambda: str(tuning("default", "stage_cost_ms.signs")),
           lambda: str(tuning("default", "mean_cost_ms")), lambda: percent(tuning("default", "exit_rates.0")),
           lambda: percent(1 - float(tuning("default", "exit_rates.0"))))),
    Quote("docs/batch.md", "{} ms per image on 2 cores = {} images/s per machine, **~{} images/s per core**",
          "default.yaml tuning",
          (lambda: str(tuning("default", "mean_cost_ms")),
           lambda: fixed(1000 / float(tuning("default", "mean_cost_ms")), 1),
           lambda: fixed(1000 / float(tuning("default", "mean_cost_ms")) / 2, 1))),
    Quote("docs/batch.md", "2,300 / {} ≈ **{} cores**", "default.yaml tuning",
          (lambda: fixed(1000 / float(tuning("default", "mean_cost_ms")) / 2, 1), capacity_cores)),
    Quote("docs/batch.md", "the detector runs on {} of images", "default.yaml tuning",
          (lambda: percent(1 - float(tuning("default", "exit_rates.0"))),)),
    Quote("docs/batch.md", "about {} images per CPU-second in `workzone batch` against {} per core when quiet",
          "batch_speed.md, pipeline_speed.md",
          (lambda: str(round(float(table_cell("batch_speed.md", "batch, local engine, 2 decode threads",
                                              "images per CPU-second")))),
           lambda: str(round(float(numbers(table_cell("pipeline_speed.md", "throughput, batches of 8", "value"))[0]) / 2)))),
    Quote("docs/batch.md", "Ray adds {} s of start-up", "batch_speed.md",
          (lambda: str(round(float(table_cell("batch_speed.md", "batch --engine ray, 1 cascade actor(s), local Ray with "
                                                                "2 CPUs", "start-up s")))),)),
    # docs/stages: what the stage pages measured.
    Quote("docs/stages/anomaly.md", "ten sources of roadwork-v1 + v2 ({} images, at most 60 per source", "anomaly_loso.md",
          (lambda: sentence("anomaly_loso.md", r"every split, (\d+) images"),)),
    Quote("docs/stages/anomaly.md", "`patch_anomaly` alone reaches a pooled out-of-fold AUC of {} (MCC {}); fused with a "
                                    "linear probe on frozen ImageNet features it lifts that probe's MCC from {} to {}",
          "anomaly_loso.md",
          (lambda: table_cell("anomaly_loso.md", "anomaly alone", "AUC (level 1)"),
           lambda: table_cell("anomaly_loso.md", "anomaly alone", "MCC (p > 0.5)"),
           lambda: table_cell("anomaly_loso.md", "probe alone", "MCC (p > 0.5)"),
           lambda: table_cell("anomaly_loso.md", "probe + anomaly", "MCC (p > 0.5)"))),
    Quote("docs/stages/anomaly.md", "(`qew-trafficcam`, AUC {})", "anomaly_loso.md",
          (lambda: fixed(table_cell("anomaly_loso.md", "qew-trafficcam", "anomaly AUC"), 2),)),
    Quote("docs/stages/onnx_classifier.md", "on the 469 dev images, {} of which ({} road work) the **previous**",
          "tta_contribution.md",
          (lambda: sentence("tta_contribution.md", r"\): (\d+) images \([0-9.]+%\), (\d+) road work"),
           lambda: sentence("tta_contribution.md", r"\): (\d+) images \([0-9.]+%\), (\d+) road work", 2))),
    # docs/stages/roadwork_detector.md: the CPU run scheme against the one before it, same run of workzone bench.
    Quote("docs/stages/roadwork_detector.md", "the bare detector session decided {} images/s ({} per CPU-second) this "
                                              "way, against {} ({} per CPU-second) one run of 4 at a time over both "
                                              "threads; the default gives the same probabilities both ways on the {} "
                                              "dev images", "bench_cpu.md, cpu_parity.md",
          (lambda: bench_cell("bench_cpu.md", BARE_DETECTOR, DEV_JPEGS, "images/s", notes_lacks="scheme before"),
           lambda: bench_cell("bench_cpu.md", BARE_DETECTOR, DEV_JPEGS, "images per CPU-s", notes_lacks="scheme before"),
           lambda: bench_cell("bench_cpu.md", BARE_DETECTOR, DEV_JPEGS, "images/s", notes_has="scheme before"),
           lambda: bench_cell("bench_cpu.md", BARE_DETECTOR, DEV_JPEGS, "images per CPU-s", notes_has="scheme before"),
           same_bits_of_all)),
    # docs/stages/roadwork_detector.md and the README: where the CPU time goes (issue 23's CPU item).
    Quote("docs/stages/roadwork_detector.md", "of the {} CPU-ms per image that the steps cost one after another on one "
                                              "thread, the detector's session takes {} and the verifier's {}; two "
                                              "detector runs at once cost {} the CPU of each alone (two verifier runs "
                                              "{})", "cpu_floor.md",
          (lambda: table_cell("cpu_floor.md", "sum of the steps", "CPU-ms per image").strip("*"),
           lambda: fixed(table_cell("cpu_floor.md", "detector session (1 thread)", "CPU-ms per image"), 0),
           lambda: fixed(table_cell("cpu_floor.md", "verifier session (1 thread, one run per image)", "CPU-ms per image"),
                         0),
           lambda: table_cell("cpu_floor.md", "detector + detector (64 images each)", "CPU against the runs alone"),
           lambda: table_cell("cpu_floor.md", "verifier + verifier (64 images each)", "CPU against the runs alone"))),
    Quote("docs/stages/roadwork_detector.md", "moves the probabilities too far ({} % of dev images within 0.02, {} "
                                              "decisions flipped)", "cpu_floor.md",
          (lambda: sentence("cpu_floor.md", r"images: ([0-9.]+)% within 0\.02"),
           lambda: sentence("cpu_floor.md", r"within 0\.02 \(max \|dp\| [0-9.]+\); (\d+) decisions differ"))),
    Quote("README.md", "the detector and verifier sessions take {} of the {} CPU-ms per image from JPEG bytes",
          "cpu_floor.md",
          (lambda: sentence("cpu_floor.md", r"The two sessions take ([0-9.]+) CPU-ms"),
           lambda: table_cell("cpu_floor.md", "whole pipeline from bytes as shipped (runs of one image over 2 workers), "
                                              "CPU-ms per image", "CPU-ms per image"))),
    # The int8 verifier the default runs on the CPU (issue 23's CPU item).
    *(Quote(doc, words, "int8_verifier.md",
            (lambda: table_cell(INT8, "roadwork-v1 dev", "n"), lambda: table_cell(INT8, "roadwork-v1 dev", "within 0.02"),
             lambda: table_cell(INT8, "roadwork-v1 dev", "decisions differ"),
             lambda: fixed(table_cell(INT8, "int8 (this graph)", "CPU-ms per image"), 1),
             lambda: fixed(table_cell(INT8, "fp32 (shipped)", "CPU-ms per image"), 1)))
      for doc, words in (("docs/stages/object_verifier.md", "on the {} dev images {} of the default's probabilities "
                          "within 0.02 of the fp32 graph's, {} decisions changed; {} against {} CPU-ms per image of "
                          "the bare session"),
                         ("src/workzone/models/VERIFIER_CARD.md", "(dev: {} images, {} of the default's probabilities "
                          "within 0.02 of the fp32 graph's, {} decisions changed; {} against {} CPU-ms per image of "
                          "the bare session"))),
    # docs/routing.md: the router benchmark (on the previous default).
    Quote("docs/routing.md", "the router reaches the best out-of-fold dev MCC ({}) at {} ms per image, but the fixed "
                             "order with its tier-1 exits moved to 0.2 / 0.85 reaches it at {} ms", "router_vs_fixed.md",
          (lambda: sentence("router_vs_fixed.md", r"best fixed-order MCC \(([0-9.]+) at"), router_best_cost(True),
           router_best_cost(False))),
]

HTTP_MAIN, HTTP_NOW = "http_overload_cpu_main.json", "http_overload_cpu.json"  # rows: 3 steps x (1, 64) addresses
QUOTES.append(
    # serving.md: the overload step (the second row of each address count), one address against 64.
    Quote("docs/serving.md", "(load {} and {}, 1080x1080 JPEGs, 20 requests/s for 8 s, about 15 a second of capacity), "
                             "one address got {} answers a second with the old rule (moved to the costly lane {} times) "
                             "and 64 addresses {}; with this rule {} and {}", f"{HTTP_MAIN}, {HTTP_NOW}",
          (lambda: json_value(HTTP_NOW, "machine.load average (1 min)"),
           lambda: json_value(HTTP_MAIN, "machine.load average (1 min)"),
           lambda: fixed(json_value(HTTP_MAIN, "rows.1.images_per_s"), 1),
           lambda: f'{json_value(HTTP_MAIN, "rows.1.stages.server log.client moved to the costly lane"):.0f}',
           lambda: fixed(json_value(HTTP_MAIN, "rows.4.images_per_s"), 1),
           lambda: fixed(json_value(HTTP_NOW, "rows.1.images_per_s"), 1),
           lambda: fixed(json_value(HTTP_NOW, "rows.4.images_per_s"), 1))))

def gap_batches(how: str, batch: str) -> Callable[[], str]:
    """Batches completed in a row of served_gap_cuda.md's second table (the event loop against the compute thread)."""
    def read() -> str:
        text = (RESULTS / "served_gap_cuda.md").read_text(encoding="utf-8").split("## 2.", 1)[1]
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|") and cells[:2] == [how, batch]:
                return cells[2]
        raise AssertionError(f"served_gap_cuda.md: no row {how!r} at batch {batch} in section 2")
    return read


GPU_PIPE = "pipeline 'default-gpu' from JPEG bytes"
GPU_BASE = "pipeline 'benchmarks/pipelines/objects-only-gpu.yaml' from JPEG bytes"
PIPES = "bench_gpu_pipelines.md"


def profile_ms(step: str, size: str = "224") -> str:
    """The ms of a step in gpu_verifier_profile.md's section 2, at ``size`` px."""
    for line in (RESULTS / "gpu_verifier_profile.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] == size and cells[2] == step:
            return cells[3]
    raise AssertionError(f"gpu_verifier_profile.md: no step {step!r} at {size} px")


def stage_measure(name: str, run: str, inputs: str, stage: str, key: str) -> str:
    """One measure of a results file's "Per stage" table (``key value, key value``), as written there."""
    for line in (RESULTS / name).read_text(encoding="utf-8").split("## Per stage", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == [run, inputs, stage]:
            return dict(kv.split(" ", 1) for kv in cells[3].split(", "))[key]
    raise AssertionError(f"{name}: no per-stage row {run!r} / {inputs!r} / {stage!r}")


def served_network(path: str, batch: str) -> str:
    """The detector network's ms per image in served_cost_cuda.md's row (path, batch)."""
    lines = [ln for ln in (RESULTS / "served_cost_cuda.md").read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [path, batch]:
            return cells[head.index("detector network")]
    raise AssertionError(f"served_cost_cuda.md: no row {path!r} at batch {batch}")
HTTP_LOWEST = "HTTP /v1/detect at 125 req/s (open loop, loopback, search)"
HTTP_1000 = "HTTP /v1/detect at 1000 req/s (open loop, loopback)"
HTTP_1000_STEP = "HTTP /v1/detect at 1000 req/s (open loop, loopback), step 1, 64 addresses"
QUOTES += [
    Quote("docs/gpu.md", "in batches of 1,024, {} images/s at 224 px and {}\nat 640 px with nvJPEG; in the same run "
          "its baseline, the detector's decision alone\n(`benchmarks/pipelines/objects-only-gpu.yaml`, what `default-gpu` "
          "was before the verifier tier ran on the device),\n{} and {}. The verifier tier took {} ms per image at 224 px "
          "and {} at 640", "bench_gpu_pipelines.md",
          (lambda: bench_cell(PIPES, GPU_PIPE, "224x224 JPEG q75", "images/s", notes_has="nvJPEG"),
           lambda: bench_cell(PIPES, GPU_PIPE, "640x640 JPEG q75", "images/s", notes_has="nvJPEG"),
           lambda: bench_cell(PIPES, GPU_BASE, "224x224 JPEG q75", "images/s", notes_has="nvJPEG"),
           lambda: bench_cell(PIPES, GPU_BASE, "640x640 JPEG q75", "images/s", notes_has="nvJPEG"),
           lambda: stage_measure(PIPES, GPU_PIPE, "224x224 JPEG q75", "verify", "ms_per_image"),
           lambda: stage_measure(PIPES, GPU_PIPE, "640x640 JPEG q75", "verify", "ms_per_image"))),
    Quote("docs/gpu.md", "at 224 px the crops {} ms, the network at fp16\n{} ms (eager; at fp32 {} ms), the verified "
          "decisions and evidence on the host {} ms", "gpu_verifier_profile.md",
          tuple((lambda r=r: profile_ms(r)) for r in ("crops on the device", "verifier network (float16)",
                                                       "verifier network (float32)",
                                                       "verified decisions + evidence (host)"))),
    Quote("docs/gpu.md", "went from {} to {} ms per image between the two bench runs", "bench_gpu.md, bench_gpu_pipelines.md",
          (lambda: stage_measure("bench_gpu.md", GPU_PIPE, "224x224 JPEG q75", "verify", "ms_per_image"),
           lambda: stage_measure(PIPES, GPU_PIPE, "224x224 JPEG q75", "verify", "ms_per_image"))),
    Quote("docs/gpu.md", "the baseline moved between them too, {} to\n{} images/s at 224 px", "bench_gpu.md, bench_gpu_pipelines.md",
          (lambda: bench_cell("bench_gpu.md", GPU_BASE, "224x224 JPEG q75", "images/s", notes_has="nvJPEG"),
           lambda: bench_cell(PIPES, GPU_BASE, "224x224 JPEG q75", "images/s", notes_has="nvJPEG"))),
    Quote("docs/gpu.md", "of\nonnxruntime's (max {}, and strict fp32 {}; section 1 of the profile)", "gpu_verifier_profile.md",
          (lambda: table_cell("gpu_verifier_profile.md", "fp16", "max abs dp (decision)"),
           lambda: table_cell("gpu_verifier_profile.md", "fp32, TF32 off", "max abs dp (decision)"))),
    Quote("docs/gpu.md", "moving each coordinate of the detector's boxes by up to 0.25 px left {} of the dev\nimages' "
          "verified decisions within 0.02 of the exact boxes' (max {}); scaling each score by up to 1 % left {}",
          "verifier_box_sensitivity.md",
          (lambda: table_cell("verifier_box_sensitivity.md", "coordinates +-0.25 px", "images within 0.02").replace("%", " %"),
           lambda: table_cell("verifier_box_sensitivity.md", "coordinates +-0.25 px", "max abs dp"),
           lambda: table_cell("verifier_box_sensitivity.md", "scores x (1 +- 0.01)", "images within 0.02").replace("%", " %"))),
    Quote("src/workzone/models/VERIFIER_CARD.md", "moving each coordinate of the\ndetector's boxes by up to 0.25 px "
          "left {} of the dev images' verified decisions within 0.02", "verifier_box_sensitivity.md",
          (lambda: table_cell("verifier_box_sensitivity.md", "coordinates +-0.25 px", "images within 0.02").replace("%", " %"),)),
    Quote("src/workzone/models/VERIFIER_CARD.md", "made it less steep: {}\n  to {} under those moves, and on one H100 "
          "the GPU path now keeps {} of the dev decisions within 0.02", "verified_steepness.md, "
          "verifier_box_sensitivity.md, gpu_detector_precision.md",
          (lambda: sentence("verified_steepness.md", r"within 0.02\n?\s*\(([\d.]+) % before; `verifier_box_sensitivity.md`") + " %",
           lambda: table_cell("verifier_box_sensitivity.md", "coordinates +-0.25 px", "images within 0.02").replace("%", " %"),
           lambda: precision_cell("float16", "libjpeg", "images within 0.02"))),
    Quote("docs/gpu.md", "with the JPEGs decoded by libjpeg, {}\nwithin 0.02 and no decision changed, which meets the test's 99 %; "
          "with the detector at fp32 on the device (`precision: float32`\non its stage), {}. Decoded by nvJPEG, {} "
          "(fp32 detector: {}), and {} decisions changed away from the\nthreshold", "gpu_detector_precision.md",
          (lambda: precision_cell("float16", "libjpeg", "images within 0.02"),
           lambda: precision_cell("float32", "libjpeg", "images within 0.02"),
           lambda: precision_cell("float16", "nvJPEG", "images within 0.02"),
           lambda: precision_cell("float32", "nvJPEG", "images within 0.02"),
           lambda: precision_cell("float16", "nvJPEG", "of them away from 0.5"))),
    Quote("docs/gpu.md", "Before the clip (logits at ±6) the\nlibjpeg figure was {}", "gpu_parity_log.txt",
          (lambda: re.search(r"GPU parity \(libjpeg decode\): \d+ images: ([\d.]+%) within",
                             (RESULTS / "gpu_parity_log.txt").read_text(encoding="utf-8")).group(1).replace("%", " %"),)),
    Quote("docs/gpu.md", "at {} requests/s, the lowest tried, {} a second were answered with p99 {} ms, and at 1,000 "
          "offered {} a second were answered", "bench_gpu.md",
          (lambda: HTTP_LOWEST.split(" at ")[1].split(" ")[0],
           lambda: bench_cell("bench_gpu.md", HTTP_LOWEST, "224x224 JPEG q75", "images/s"),
           lambda: re.search(r"p99 ([\d.]+) ms", bench_cell("bench_gpu.md", HTTP_LOWEST, "224x224 JPEG q75",
                                                              "notes")).group(1),
           lambda: bench_cell("bench_gpu.md", HTTP_1000, "224x224 JPEG q75", "images/s"))),
    Quote("docs/gpu.md", "at 1,000 offered, {} answers a second at the server's 0.5 ms (`WORKZONE_GIL_SWITCH_MS`, "
          "[serving.md](serving.md)) against {} at Python's 5 ms", "http_switch_5ms.md",
          (lambda: bench_cell("bench_gpu.md", HTTP_1000, "224x224 JPEG q75", "images/s"),
           lambda: bench_cell("http_switch_5ms.md", HTTP_1000_STEP, "224x224 JPEG q75", "images/s"))),
    Quote("docs/gpu.md", "alone (14:18 UTC), answered {} at 0.1 ms", "http_switch_0.1ms.md",
          (lambda: bench_cell("http_switch_0.1ms.md", HTTP_1000_STEP, "224x224 JPEG q75", "images/s"),)),
    Quote("docs/gpu.md", "process, {} and {} ms per image against {} and {}", "served_cost_cuda.md",
          tuple((lambda r=r: served_network(*r)) for r in (("served", "8"), ("served", "64"), ("in process", "8"),
                                                             ("in process", "64")))),
    Quote("docs/gpu.md", "the network takes {} ms a batch ({} images/s on its own) and `detect()` {} ms ({} images/s, "
          "decode not included), of which the JPEG round trip is {} ms", "gpu_stage_profile_input224.md",
          tuple((lambda r=r, c=c: table_cell("gpu_stage_profile_input224.md", r, c)) for r, c in (
              ("detector network", "min ms"), ("detector network", "images/s (at min)"),
              ("detect() + to_host, eager treatment", "min ms"),
              ("detect() + to_host, eager treatment", "images/s (at min)"), ("JPEG round trip (q72)", "min ms")))),
    Quote("docs/gpu.md", "nvJPEG decode {} ms, the treatment {} ms (JPEG round trip {} ms, letterbox {} ms), the "
          "detector network {} ms ({} images/s on its own) and box decoding with the decision {} ms",
          "gpu_stage_profile.md",
          tuple((lambda r=r, c=c: table_cell("gpu_stage_profile.md", r, c)) for r, c in (
              ("decode", "min ms"), ("steps 2-5 as inputs(), eager", "min ms"), ("JPEG round trip (q72)", "min ms"),
              ("letterbox to 384 (+ /255, to float16)", "min ms"), ("detector network", "min ms"),
              ("detector network", "images/s (at min)"), ("box decoding + decision", "min ms")))),
    Quote("docs/gpu.md", "without the round trip its out-of-fold object decision falls from pooled MCC {} to {}",
          "jpeg_roundtrip_needed.md",
          (lambda: table_cell("jpeg_roundtrip_needed.md", "pooled MCC", "objects, CPU re-run, as trained").split(" [")[0].strip("*"),
           lambda: table_cell("jpeg_roundtrip_needed.md", "pooled MCC",
                              "objects, CPU re-run, no JPEG round trip").split(" [")[0].strip("*"))),
    Quote("docs/batch.md", "on one H100 from JPEG bytes: {} images/s at 224 px, {} at 640 px, batches of 1,024",
          PIPES,
          (lambda: bench_cell(PIPES, GPU_PIPE, "224x224 JPEG q75", "images/s", notes_has="nvJPEG"),
           lambda: bench_cell(PIPES, GPU_PIPE, "640x640 JPEG q75", "images/s", notes_has="nvJPEG"))),
    Quote("docs/gpu.md", "four HTTP\nprocesses in front of one engine answered {} requests a second at 3,000 offered, against {} for "
          "the cascade in the\nserver's process, and held {} requests/s with p99 <= 100 ms", "http_engine_workers4.md",
          (lambda: bench_cell("http_engine_workers4.md", HTTP_3000, "224x224 JPEG q75", "images/s"),
           lambda: bench_cell("http_engine_inproc.md", HTTP_3000, "224x224 JPEG q75", "images/s"),
           lambda: bench_cell("http_engine_workers4.md", HTTP_HELD, "224x224 JPEG q75", "images/s"))),
    Quote("src/workzone/models/VERIFIER_CARD.md", "made the decision worse out of fold, pooled MCC {} -> {}\n  class-aware, "
          "mostly on night dashcam negatives (Nexar {} -> {} specificity)", "verifier_context.md",
          tuple((lambda row=row, col=col: numbers(table_cell("verifier_context.md", row, col))[0])
                for row, col in (("pooled MCC", CTX2), ("pooled MCC", CTX3), ("nexar-eduardo", CTX2),
                                 ("nexar-eduardo", CTX3)))),
    Quote("docs/serving.md", "batches of 8 one-image requests ran {} in 5 s at 0.5 ms against {} at 5 ms ({} with the "
          "loop idle), and with it busy 90 % of its time {} and {} at 0.1 ms against {}", "served_gap_cuda.md",
          (gap_batches("served, loop busy 50%, switch interval 0.5 ms", "8"), gap_batches("served, loop busy 50%", "8"),
           gap_batches("served", "8"), gap_batches("served, loop busy 90%, switch interval 0.5 ms", "8"),
           gap_batches("served, loop busy 90%, switch interval 0.1 ms", "8"), gap_batches("served, loop busy 90%", "8"))),
]

#: Paragraphs that link a results file without quoting a figure from it (or whose figures are the file's
#: own command line): (document, words that identify the paragraph).
QUOTE_NONE = [
    ("README.md", "images/s from JPEG bytes -> benchmarks/results/"),
    ("README.md", "([results](benchmarks/results/reliability.md))"),
    ("docs/gpu.md", "writes `benchmarks/results/bench_{cpu,gpu}.md`"),
    ("docs/serving.md", "has the figures"),
    ("docs/stages/roadwork_detector.md", "measured, it does not pay"),
]


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("quote", QUOTES, ids=[f"{q.doc}:{q.words[:40]}" for q in QUOTES])
def test_a_quoted_figure_matches_its_results_file(quote: Quote) -> None:
    expected = quote.render()
    doc = _normalised((REPO / quote.doc).read_text(encoding="utf-8"))
    assert _normalised(expected) in doc, (
        f"{quote.doc} should say {expected!r}, read now from {quote.source}; update the document (or the results "
        "file, if it is the one that is stale)")


def _paragraphs(doc: str) -> list[str]:
    text = (REPO / doc).read_text(encoding="utf-8")
    return [_normalised(p) for p in re.split(r"\n\s*\n|\n(?=\|)", text) if p.strip()]


DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_every_paragraph_quoting_a_results_file_is_checked(doc: str) -> None:
    rendered = [_normalised(q.render()) for q in QUOTES if q.doc == doc]
    none = [words for d, words in QUOTE_NONE if d == doc]
    unchecked = []
    for para in _paragraphs(doc):
        cites = "benchmarks/results" in para
        if not cites or not re.search(r"\d\.\d", para) and not any(w in para for w in none):
            continue
        if any(r in para for r in rendered) or any(w in para for w in none):
            continue
        unchecked.append(para[:160])
    assert not unchecked, (f"{doc}: paragraphs link a results file and state figures no test reads from it; add a "
                           f"Quote to tests/test_docs_figures.py: {unchecked}")


def test_the_quotes_read_real_figures() -> None:
    # A reader that silently returned nothing would make every quote trivially true.
    for q in QUOTES:
        for f in q.figures:
            value = f()
            assert re.search(r"\d", value), (q.doc, q.words, value)
            assert not (value.replace(".", "").isdigit() and math.isnan(float(value)))
