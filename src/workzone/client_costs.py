"""What each client's images cost the cascade, measured, and which clients run in the costly lane.

The cascade's time per image is not the same for every image: a 16-MP image costs the default
pipeline many times what an ordinary dashcam frame costs (its stages bring it to their input size
and read signs from its full resolution). The micro-batcher runs batches one after the other, so an
ordinary image queued behind, or batched with, a costly one waits for all of it: two clients sending
legal 24-MP WebPs back to back cut a third client's throughput below 0.8x (benchmarks/reliability.py,
section cpu-bombs, with the costly lane off).

:class:`ClientCosts` charges every batch's measured time to the clients whose images were in it, in
proportion to their pixels (the part of a stage's work that grows with the image), and keeps a
smoothed cost per image for each client. A client whose images cost more than ``costly_image_s``
each, and more than ``ratio`` times what a typical image costs now (the 25th percentile of the last
256 images charged), is *costly*: :class:`workzone.service.DetectionService` runs its images in
their own lane (one image at a time, never batched with other clients' images), so nobody waits
behind them; together, costly clients get at most that lane's one worker while everyone else keeps
the shared lane. A client is judged on what its images were measured to cost; until it has been
measured, on its image's pixels at the typical image's cost per pixel (which overestimates a large
image: the fixed part of an image's cost is counted per pixel too, so a large first image errs
towards the costly lane). A client whose images become cheap again leaves the costly lane after a
few of them. The typical image's cost keeps a saturated server in one lane: when every batch is
slow, every client's images cost more than ``costly_image_s``, but none costs more than the others.

A client that sent more than a quarter of the recent images is compared with the images of the
others only, and never called costly when the others sent fewer than ``_MIN_OTHERS`` of them: the
lane protects other clients, and with one client (a load test, a single validator, a proxy in front)
there is nobody to protect, while sending all of the traffic one image at a time, unbatched, would
cut the whole server's rate to that of one-image batches (on a GPU, a small fraction of it). Its
images are compared with themselves otherwise, and a batch that happened to be slow (a first run, a
busy CPU) would flag it.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Hashable, Sequence

from workzone.errors import ConfigError

__all__ = ["ClientCosts"]

log = logging.getLogger("workzone.client_costs")

_WINDOW = 256  # recent images the typical cost is taken over
_DOMINANT = 0.25  # share of the recent images above which a client is compared with the others only
_MIN_OTHERS = 8  # images of other clients needed to compare a dominant client with


@dataclass
class ClientCosts:
    """Smoothed cascade seconds per image, by client key.

    Attributes:
        costly_image_s: a client whose images cost more than this each (smoothed) is costly; 0: never.
        ratio: ... and more than this many times the typical image's cost.
        smoothing: weight of the newest image in the smoothed cost (1: the last image alone).
        max_clients: clients remembered; the least recently charged are forgotten first.

    Examples:
        >>> costs = ClientCosts(costly_image_s=0.2)
        >>> for _ in range(3):
        ...     costs.charge(["a", "b", "b", "b"], [16_000_000, 300_000, 300_000, 300_000], seconds=0.6)
        >>> costs.is_costly("a"), costs.is_costly("b"), costs.is_costly("new")
        (True, False, False)
    """

    costly_image_s: float = 0.2
    ratio: float = 2.0
    smoothing: float = 0.5
    max_clients: int = 10_000
    _per_image: OrderedDict[Hashable, float] = field(default_factory=OrderedDict)
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    _recent_clients: deque[Hashable | None] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    _typical: float = 0.0
    #: The typical cost of the other clients' images, for the clients that sent most of the recent ones
    #: (None: too few others to compare with).
    _typical_apart: dict[Hashable, float | None] = field(default_factory=dict)
    _recent_per_pixel: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    _typical_per_pixel: float = 0.0

    def __post_init__(self) -> None:
        if self.ratio < 1:
            raise ConfigError(f"ratio: expected >= 1, got {self.ratio}")
        if self.costly_image_s < 0:
            raise ConfigError(f"costly_image_s: expected >= 0, got {self.costly_image_s}")
        if not 0 < self.smoothing <= 1:
            raise ConfigError(f"smoothing: expected in (0, 1], got {self.smoothing}")

    def is_costly(self, client: Hashable | None, pixels: int = 0) -> bool:
        """Whether ``client``'s images (of ``pixels`` each, for a client not measured yet) run in the
        costly lane (never for a keyless caller)."""
        if not self.costly_image_s or client is None:
            return False
        cost = self._per_image.get(client)
        if cost is None:  # not measured yet: its pixels at the typical cost per pixel
            cost = pixels * self._typical_per_pixel
        typical = self._typical_apart.get(client, self._typical)
        return typical is not None and cost > self.costly_image_s and cost > self.ratio * typical

    def _typical_of_others(self, client: Hashable) -> float | None:
        others = sorted(c for c, who in zip(self._recent, self._recent_clients) if who != client)
        return others[len(others) // 4] if len(others) >= _MIN_OTHERS else None

    def cost(self, client: Hashable) -> float | None:
        """The smoothed seconds per image charged to ``client``, or None before its first image."""
        return self._per_image.get(client)

    def charge(self, clients: Sequence[Hashable | None], pixels: Sequence[int], seconds: float) -> None:
        """Charge one batch's measured ``seconds`` to the clients of its images (``None``: a keyless
        caller, not recorded), each image its share of the batch's pixels."""
        total = sum(pixels)
        if total <= 0 or not clients:
            return
        was = {c: self.is_costly(c) for c in clients if c is not None}
        for client, px in zip(clients, pixels):
            spent = seconds * px / total
            self._recent.append(spent)
            self._recent_clients.append(client)
            self._recent_per_pixel.append(seconds / total)
            if client is None:
                continue
            old = self._per_image.pop(client, None)  # re-inserted last: the most recently charged
            self._per_image[client] = spent if old is None else old + self.smoothing * (spent - old)
        while len(self._per_image) > self.max_clients:
            self._per_image.popitem(last=False)
        ordered = sorted(self._recent)
        self._typical = ordered[len(ordered) // 4]
        self._typical_apart = {c: self._typical_of_others(c) for c, n in Counter(self._recent_clients).items()
                               if c is not None and n > _DOMINANT * len(self._recent_clients)}
        ordered = sorted(self._recent_per_pixel)
        self._typical_per_pixel = ordered[len(ordered) // 4]
        for client, costly in was.items():  # one line when a client changes lanes, not one per image
            if self.is_costly(client) != costly:
                log.warning("client %s: its images cost %.3f s each (a typical image %.3f s): %s", client,
                            self._per_image.get(client, 0.0), self._typical,
                            "they now run in the costly lane" if not costly else "back to the shared lane")
