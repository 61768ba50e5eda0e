"""The measurements behind ``workzone bench``: images/s from JPEG bytes (decode included) and per-stage
latency, CPU and GPU.

Named for what it measures, not after the command: the repository's ``benchmarks/`` folder holds
scripts and their results, and imports from here (``describe_machine``, the parity check).

Modules:
    inputs   JPEG bytes synthesised at run time from sample images (nothing licensed is shipped)
    machine  what the results ran on (CPU model, GPU name, torch / onnxruntime versions)
    runs     the measurements (each returns a :class:`~workzone.throughput.runs.Row`)
    http     latency of ``workzone serve`` under open-loop load
    parity   the torch object path against onnxruntime on the same images
    results  the Markdown and JSON results files
"""
