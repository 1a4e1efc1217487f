"""``torch.compile`` on CPU for the fast path's fused kernels, with an eager fallback.

:class:`Kernel` wraps a plain tensor function: once a model has made :data:`COMPILE_AFTER`
fast-path calls it runs compiled (inductor fuses gathers, products and scatter-adds into loops,
no ``[n_pairs, F]`` temporaries, one graph instead of many small operations); before that, if
compilation is unavailable or fails, or with ``SWEEP_COMPILE=0``, the same function runs eagerly.
Used by :mod:`schnet_model.nn.atomwise` (the atom-wise network and forces) and
:mod:`schnet_model.nn.filters` (the filter activations).
"""

from __future__ import annotations

import os
import warnings

import torch

COMPILE_AFTER = int(os.environ.get("SWEEP_COMPILE_AFTER", "200"))
"""A model compiles its kernels after this many fast-path calls (eager before): compilation costs
20–30 s once per process on a small CPU, which short runs (tests, quick trials) never recover.
Counted per model instance, so two identically seeded runs switch at the same step."""


class Kernel:
    """A kernel run compiled on CPU tensors when asked and possible, eagerly otherwise.

    Args:
        fn: the eager function (tensors and lists of tensors in, tensors out).
        threads: threads of the compiled loops; 1 for kernels that scatter-add (the adds then
            happen in a fixed order: bitwise reproducible whatever torch's thread count; atomic
            adds across threads are not), ``None`` (torch's) for purely elementwise ones.
    """

    enabled = os.environ.get("SWEEP_COMPILE", "1") != "0"

    def __init__(self, fn, threads: int | None = 1) -> None:
        self.fn = fn
        self.threads = threads
        self.compiled = None
        self.failed = False

    def __call__(self, compiled: bool, *args):
        if compiled and self.enabled and not self.failed and args[0].device.type == "cpu":
            try:
                if self.compiled is None:
                    options = {"cpp.threads": self.threads} if self.threads else {}
                    self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=options)
                return self.compiled(*args)
            except Exception as e:  # no compiler, unsupported platform, ...: same math, eagerly
                self.failed = True
                warnings.warn(f"SchNet: torch.compile of {self.fn.__name__} failed ({type(e).__name__}: "
                              f"{str(e)[:200]}); using the eager kernel", stacklevel=2)
        return self.fn(*args)
