"""A brief overload from one address against the same load from many: does the server recover?

One ``workzone serve`` per address count, the bench's own open-loop generator
(:mod:`workzone.throughput.http`), and for each the same schedule of rates: under capacity, over it
(the brief overload), and under it again (the recovery). Each row says what every answer was and
which limit refused. Run it under the bench lock:

    flock /work/notes/bench.lock python benchmarks/http_overload.py --addresses 1 --addresses 64 \\
        --rate 15 --rate 60 --rate 15 --seconds 8 --out benchmarks/results/http_overload_cpu.md
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from workzone.throughput.http import _timed, served
from workzone.throughput.inputs import sample_images, synth_jpegs
from workzone.throughput.machine import describe_machine
from workzone.throughput.results import write_results


def main(addresses: List[int] = typer.Option([1, 64], help="loopback source addresses, one server each"),
         rate: List[float] = typer.Option([15.0, 60.0, 15.0], help="requests/s, in order, on the same server"),
         seconds: float = typer.Option(8.0, help="seconds per rate"),
         pipeline: str = "default", device: str = "cpu", size: int = 224,
         batch_size: int = typer.Option(16, help="the server's batch (workzone serve's default)"),
         batch_wait_ms: float = 5.0, queue_size: int = 256,
         backend: Optional[str] = typer.Option(None, help="serve the pipeline's ONNX stages on this backend "
                                               "(torch: the GPU path, here on the CPU)"),
         compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="with --backend torch: "
                                                "torch.compile the graphs"),
         out: Path = Path("benchmarks/results/http_overload_cpu.md")) -> None:
    root = Path(__file__).resolve().parent.parent
    if backend is not None or compile is not None:
        pipeline = _with_backend(pipeline, backend, compile)
    blobs = synth_jpegs(256, (size, size), sources=sample_images(root / "samples"))
    label = f"{size}x{size} JPEG q75"
    rows = []
    for n in addresses:
        with served(pipeline, device, batch_size=batch_size, batch_wait_ms=batch_wait_ms, queue_size=queue_size,
                    probe=blobs[0]) as server:
            for k, r in enumerate(rate):
                row = _timed(server, blobs, label, device, r, seconds, batch_size, batch_wait_ms, addresses=n)
                row.name = f"{row.name}, step {k + 1}, {n} address{'es' if n != 1 else ''}"
                row.notes += f"; {_time_wait()} loopback connections in TIME_WAIT after it"
                rows.append(row)
                print(f"{row.name}: {row.images_per_s:.1f} answered/s; {row.notes}", flush=True)
    write_results(rows, describe_machine(device), out, title="HTTP overload and recovery, one address vs many",
                  command="python " + " ".join(shlex.quote(a) for a in sys.argv))


def _with_backend(pipeline: str, backend: Optional[str], compile: Optional[bool]) -> str:
    """A copy of ``pipeline``'s YAML whose model stages name ``backend`` and ``compile`` (a temporary file)."""
    import yaml

    from workzone.config.loader import load_pipeline_config

    _, path = load_pipeline_config(pipeline)
    doc = yaml.safe_load(path.read_text())
    for tier in doc["tiers"]:
        for stage in tier["stages"]:
            if "model" in stage:  # the ONNX stages, which have both params
                stage.update({k: v for k, v in (("backend", backend), ("compile", compile)) if v is not None})
    doc["name"] = f"{doc['name']}-{backend or 'auto'}{'-compiled' if compile else ''}"
    folder = Path(tempfile.mkdtemp(prefix="workzone-bench-"))
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(folder / "pipeline.yaml")


def _time_wait() -> int:
    # Each refusal sent before its body is read closes its connection: from one source address, those
    # closed connections hold its ephemeral ports for a minute (TIME_WAIT, state 06).
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            n += sum(1 for line in Path(table).read_text().splitlines()[1:] if line.split()[3] == "06")
        except OSError:
            pass
    return n


if __name__ == "__main__":
    typer.run(main)
