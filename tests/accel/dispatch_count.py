"""Count the torch operators a call dispatches (each is a kernel launch on a GPU, with a fixed cost whatever the
tensor sizes: what a small served batch pays per image)."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def counted_ops() -> Iterator[list[int]]:
    """``with counted_ops() as n: ...`` then ``n[0]`` is the operators dispatched in this thread meanwhile."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = [0]

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            count[0] += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        yield count
