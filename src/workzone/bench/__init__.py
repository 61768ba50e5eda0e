"""``workzone bench``: images/s from JPEG bytes (decode included) and per-stage latency, CPU and GPU.

Modules:
    inputs   JPEG bytes synthesised at run time from sample images (nothing licensed is shipped)
    machine  what the results ran on (CPU model, GPU name, torch / onnxruntime versions)
    runs     the measurements (each returns a :class:`~workzone.bench.runs.Row`)
    report   the Markdown and JSON results files
"""
