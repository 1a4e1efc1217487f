"""``torch.compile`` on CPU for the fast path's fused kernels, with an eager fallback.

:class:`Kernel` wraps a plain tensor function: once a model has made :data:`COMPILE_AFTER`
fast-path calls it runs compiled (inductor fuses gathers, products and scatter-adds into loops,
no ``[n_pairs, F]`` temporaries, one graph instead of many small operations); before that, if
compilation is unavailable or fails, or when the policy says never (``training.compile_after: null``), the same
function runs eagerly.
Used by :mod:`schnet_model.nn.atomwise` (the atom-wise network and forces), :mod:`schnet_model.nn.painn_blocks`
(PaiNN's blocks and forces) and
:mod:`schnet_model.nn.filters` (the filter activations).
"""

from __future__ import annotations

import logging
import subprocess
import warnings

import torch

from schnet_model.config import COMPILE_AFTER

# COMPILE_AFTER: training.compile_after's default
__all__ = ["COMPILE_AFTER", "COMPILE_ERRORS", "Kernel", "compile_now", "forget_compiled"]


def _dynamo_errors() -> tuple[type[BaseException], ...]:
    try:
        from torch._dynamo.exc import FailOnRecompileLimitHit
    except ImportError:  # an older torch: the limit falls back to eager by itself
        return ()
    return (FailOnRecompileLimitHit,)


COMPILE_ERRORS = (RuntimeError, OSError, ImportError, subprocess.SubprocessError, *_dynamo_errors())
"""What a failed ``torch.compile`` raises: dynamo/inductor errors (RuntimeError subclasses: unsupported operation,
no or broken C++ compiler), a missing toolchain (OSError, ImportError), a failed compiler run, or dynamo's recompile
limit (``FailOnRecompileLimitHit``, an ``Exception``: a ``fullgraph`` kernel traced for more shapes than the limit)."""

log = logging.getLogger("schnet_model.compile")


def compile_now(calls: int, after: int | None, device: torch.device, who: str) -> bool:
    """The compile policy: run the compiled CPU kernels once ``calls`` ≥ ``after`` (``None``: never); the switch is
    logged once, at the call it happens (``who`` names the model)."""
    if after is None or device.type != "cpu" or calls < after:
        return False
    if calls == after:
        log.info("%s: CPU kernels compiled by torch.compile from fast-path call %d on (training.compile_after)",
                 who, after)
    return True


_KERNELS: list[Kernel] = []


def forget_compiled() -> None:
    """Drop every compiled kernel of this process and dynamo's caches, so that the next model compiles afresh.

    A process that trains one configuration after another (a reused fold actor or trial process) would otherwise
    accumulate one traced graph per configuration on the same kernels until dynamo's recompile limit (8) fails the
    next ``fullgraph`` compile; call this when a new configuration is set up. Inductor's on-disk cache keeps a
    configuration seen before cheap to compile again.
    """
    if not any(k.compiled is not None for k in _KERNELS):
        return  # nothing compiled yet: nothing to forget
    import torch._dynamo

    torch._dynamo.reset()
    for k in _KERNELS:
        k.compiled, k.failed = None, False


class Kernel:
    """A kernel run compiled on CPU tensors when asked and possible, eagerly otherwise.

    Args:
        fn: the eager function (tensors and lists of tensors in, tensors out).
        threads: threads of the compiled loops; 1 for kernels that scatter-add (the adds then
            happen in a fixed order: bitwise reproducible whatever torch's thread count; atomic
            adds across threads are not), ``None`` (torch's) for purely elementwise ones.
    """

    def __init__(self, fn, threads: int | None = 1) -> None:
        self.fn = fn
        self.threads = threads
        self.compiled = None
        self.failed = False
        _KERNELS.append(self)

    def __call__(self, compiled: bool, *args):
        if compiled and not self.failed and args[0].device.type == "cpu":
            try:
                if self.compiled is None:
                    options = {"cpp.threads": self.threads} if self.threads else {}
                    self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=options)
                return self.compiled(*args)
            except COMPILE_ERRORS as e:  # no compiler, unsupported platform, ...: same math, eagerly
                self.failed = True
                warnings.warn(f"torch.compile of {self.fn.__module__}.{self.fn.__name__} failed ({type(e).__name__}: "
                              f"{str(e)[:200]}); using the eager kernel", stacklevel=2)
        return self.fn(*args)
