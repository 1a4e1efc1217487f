"""torch's CPU thread count for a block of work, restored after it: the one place it is switched temporarily."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MD_THREADS = 1  # the engines' default: one small molecule's step is many small kernels (docs/md.md, "Speed")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: leave torch's setting alone), then restore the old count."""
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads: {n}; expected at least 1 (or None for torch's default)")
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


__all__ = ["MD_THREADS", "torch_threads"]
