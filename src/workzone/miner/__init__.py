"""A drop-in NATIX StreetVision (Bittensor SN72) miner around the workzone cascade.

:mod:`.service` holds the logic (decode, decide within the deadline, blacklist, priority) and does
not import bittensor; :mod:`.synapse` and :mod:`.axon` need the ``miner`` extra.
"""

__all__: list[str] = []
