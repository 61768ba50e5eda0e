"""HTTP service for workzone (``workzone serve``), needs the ``serve`` extra.

Layers, as in the style guide: :mod:`.protocol` (wire models), the detection service
(:mod:`workzone.service`: decoding, batching, deadlines; knows no routes, shared with the miner),
:mod:`.routes` (thin handlers), :mod:`.errors` (exception -> HTTP status, in one place),
:mod:`.metrics` (Prometheus) and :mod:`.app` (``create_app``).
"""

__all__: list[str] = []
