"""Continuous-filter convolution on unordered pairs, its transpose and derivatives, fused.

Pairs are unordered (i < j), each row of a filter ``W [n_pairs, F]`` serves both messages
(i ← j and j ← i) because filters depend on the distance only. The kernels:

- ``conv(W, x)_a = Σ_{p ∋ a} W_p ∘ x_{other(p, a)}``: the cfconv sum; with a symmetric pair set
  it is its own transpose, so it is also the backward of itself with respect to ``x``;
- ``outer(a, b)_p = a_i ∘ b_j + a_j ∘ b_i``: the backward of ``conv`` with respect to ``W``;
- ``outer_dot(a, b, V)_p = ⟨V_p, outer(a, b)_p⟩``: the force contribution ``∂E/∂d_p`` of one
  interaction (``a = ∂E/∂m``, ``b = h``, ``V = W'``).

Two autograd Functions combine them: :class:`Conv` (the forward cfconv) and :class:`ConvBack`
(the explicit energy backward through a cfconv, giving ``∂E/∂h`` and ``∂E/∂d``), each with a
hand-written first-order backward. The training step differentiates the explicit force
computation once; nothing is differentiated twice.

On CPU the kernels are compiled with ``torch.compile`` (inductor fuses gather, product and
scatter into one loop, no ``[n_pairs, F]`` temporaries) once a model has made
:data:`COMPILE_AFTER` fast-path calls; before that, if compilation is unavailable or fails, or
with ``SWEEP_COMPILE=0``, the same code runs eagerly.
"""

from __future__ import annotations

import os
import warnings

import torch


def _conv(w, x, pi, pj):
    out = torch.zeros_like(x)
    out.index_add_(0, pi, w * x[pj])
    out.index_add_(0, pj, w * x[pi])
    return out


def _k_conv(w, x, pi, pj):
    return _conv(w, x, pi, pj)


def _k_conv_bwd(w, x, g, pi, pj):
    """(conv(W, g), outer(g, x))."""
    return _conv(w, g, pi, pj), g[pi] * x[pj] + g[pj] * x[pi]


def _k_back(w, wd, g, h, pi, pj):
    """(conv(W, g), outer_dot(g, h, W'))."""
    return _conv(w, g, pi, pj), (wd * (g[pi] * h[pj] + g[pj] * h[pi])).sum(1)


def _k_back_bwd(w, wd, g, h, gh, u, pi, pj):
    """Backward of ``_k_back`` given ``gh = ∂L/∂conv(W, g)`` and ``u = ∂L/∂outer_dot``."""
    su = u[:, None]
    g_g = torch.zeros_like(g)  # ∂L/∂g = conv(W, gh) + conv(u W', h)
    g_g.index_add_(0, pi, w * gh[pj] + su * wd * h[pj])
    g_g.index_add_(0, pj, w * gh[pi] + su * wd * h[pi])
    g_h = torch.zeros_like(h)  # ∂L/∂h = conv(u W', g)
    g_h.index_add_(0, pi, su * wd * g[pj])
    g_h.index_add_(0, pj, su * wd * g[pi])
    g_w = gh[pi] * g[pj] + gh[pj] * g[pi]  # outer(gh, g)
    g_wd = su * (g[pi] * h[pj] + g[pj] * h[pi])  # u · outer(g, h)
    return g_g, g_h, g_w, g_wd


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


k_conv = Kernel(_k_conv)
k_conv_bwd = Kernel(_k_conv_bwd)
k_back = Kernel(_k_back)
k_back_bwd = Kernel(_k_back_bwd)


class Conv(torch.autograd.Function):
    """``m = conv(W, h)`` over unordered pairs ``(pi, pj)``."""

    @staticmethod
    def forward(ctx, w, h, pi, pj, compiled):  # type: ignore[override]
        ctx.save_for_backward(w, h, pi, pj)
        ctx.compiled = compiled
        return k_conv(compiled, w, h, pi, pj)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gm):  # type: ignore[override]
        w, h, pi, pj = ctx.saved_tensors
        gh, gw = k_conv_bwd(ctx.compiled, w, h, gm.contiguous(), pi, pj)
        return gw, gh, None, None, None


class ConvBack(torch.autograd.Function):
    """``(∂E/∂h, ∂E/∂d) = (conv(W, g), outer_dot(g, h, W'))`` for ``g = ∂E/∂m``."""

    @staticmethod
    def forward(ctx, w, wd, g, h, pi, pj, compiled):  # type: ignore[override]
        ctx.save_for_backward(w, wd, g, h, pi, pj)
        ctx.compiled = compiled
        return k_back(compiled, w, wd, g, h, pi, pj)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gh, u):  # type: ignore[override]
        w, wd, g, h, pi, pj = ctx.saved_tensors
        if gh is None:
            gh = torch.zeros_like(g)
        if u is None:
            u = w.new_zeros(w.shape[0])
        g_g, g_h, g_w, g_wd = k_back_bwd(ctx.compiled, w, wd, g, h, gh.contiguous(), u.contiguous(), pi, pj)
        return g_w, g_wd, g_g, g_h, None, None, None


def conv_plain(w, h, pi, pj, compiled):
    """``conv(W, h)`` without autograd."""
    return k_conv(compiled, w, h, pi, pj)


def conv_back(w, wd, g, h, pi, pj, compiled):
    """``(conv(W, g), outer_dot(g, h, W'))`` without autograd."""
    return k_back(compiled, w, wd, g, h, pi, pj)
