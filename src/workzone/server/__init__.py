"""HTTP service for workzone (``workzone serve``), needs the ``serve`` extra.

Layers, as in the style guide: :mod:`.protocol` (wire models), :mod:`.service` (decoding,
batching, deadlines; knows no routes), :mod:`.routes` (thin handlers), :mod:`.errors` (exception
-> HTTP status, in one place), :mod:`.metrics` (Prometheus) and :mod:`.app` (``create_app``).

Nothing is imported here so that ``import workzone.server.service`` (used by the miner) does not
pull in FastAPI.
"""

__all__: list[str] = []
