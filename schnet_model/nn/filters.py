"""Windowed continuous filters (CPU): all interactions (and members) at once, with their distance derivatives.

The filter of interaction t for a pair at distance d is

    W_t(d) = Dense(F→F)( ssp( Dense(n_rbf→F)( g(d) ) ) ) · f_cut(d),   g_k(d) = exp(−γ (d − μ_k)²)

It depends on the distance only. :class:`FilterBank` computes, for every pair, ``W_b(d)`` and the
derivative ``W_b'(d) = dW_b/dd`` (forward mode, needed for forces) of all filter blocks b in one
pass — the T interactions of one member, or of k members sharing the distances (an ensemble) —
and the gradients of both with respect to the filter parameters in its backward. Forces are then
``∂E/∂d = Σ_t ⟨∂E/∂W_t, W_t'⟩`` (:mod:`schnet_model.nn.atomwise`): no autograd graph through the
radial basis, no second derivative of the Gaussians, and in training the filter network is
differentiated once (a first-order backward of this Function), not twice.

Work saved against the dense formulation:

- pairs are processed sorted by distance in chunks; each chunk multiplies only the window of
  Gaussians that are non-negligible for its distance range (:func:`gaussian_window`, about 35
  of 300 per chunk for molecules, see :func:`truncation_radius` for the bound: each dropped value
  is below eps·2⁻¹⁰);
- the first layers of all blocks read the same Gaussians: one product per chunk;
- chunk-sized elementwise work (activations, their derivatives) stays in cache.

The distances are constants here (no gradient flows to them), and the chunk windows are read on
the host (a synchronisation per call): this is the CPU path. :mod:`schnet_model.nn.filters_dense`
is the same function over all Gaussians, without either restriction (GPUs, forces by autograd).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from schnet_model.config import ModelConfig
from schnet_model.nn.activations import shifted_softplus
from schnet_model.nn.compiled import Kernel
from schnet_model.nn.radial import gaussian_window, rbf_centers


@dataclass
class FilterPlan:
    """Distances sorted ascending, their chunks and Gaussian windows, the cutoff values."""

    d: torch.Tensor  # [n_pairs] sorted ascending, no grad
    chunks: list[tuple[int, int, int, int]]  # (p0, p1, k0, k1): pairs [p0, p1), centres [k0, k1)
    centers: torch.Tensor  # [n_rbf] in the compute dtype
    gamma: float
    fcut: torch.Tensor | None = None  # [n_pairs] cutoff values
    fcut_d: torch.Tensor | None = None  # [n_pairs] their derivative
    compiled: bool = False  # run the fused elementwise kernels (see compiled.COMPILE_AFTER)


def make_plan(d_sorted: torch.Tensor, cfg: ModelConfig, fcut=None, fcut_d=None, chunk: int = 1024,
              compiled: bool = False) -> FilterPlan:
    """Chunks of ``chunk`` consecutive (sorted) pairs, each with its window of Gaussians."""
    n = d_sorted.numel()
    bounds = list(range(0, n, chunk)) + [n]
    if n:
        lo_hi = d_sorted[torch.tensor([min(b, n - 1) for b in bounds], device=d_sorted.device)].tolist()
    chunks = []
    for c in range(len(bounds) - 1):
        p0, p1 = bounds[c], bounds[c + 1]
        d_lo, d_hi = lo_hi[c], lo_hi[c + 1]  # d[p0] and d[min(p1, n − 1)] ≥ d[p1 − 1]
        k0, k1 = gaussian_window(d_lo, d_hi, d_sorted.dtype, cfg.gamma, cfg.rbf_spacing, cfg.n_rbf)
        chunks.append((p0, p1, k0, k1))
    centers = rbf_centers(cfg.n_rbf, cfg.rbf_spacing, d_sorted.dtype, d_sorted.device)
    return FilterPlan(d_sorted, chunks, centers, cfg.gamma, fcut, fcut_d, compiled)


# -- elementwise work on all interactions' first-layer outputs, [n_pairs, T·F] at once -----------
def _act(a):
    """(S, σ) = (ssp(A), sigmoid(A))."""
    return shifted_softplus(a), torch.sigmoid(a)


def _act_d(a, ad):
    """(S, σ, S', Q) with S' = σ(A)·A' = dS/dd and Q = σ'(A)·A' = S'·(1 − σ)."""
    sig = torch.sigmoid(a)
    sd = sig * ad
    return shifted_softplus(a), sig, sd, sd - sd * sig


def _act_d_infer(a, ad):
    """(S, S') without what only the backward needs."""
    return shifted_softplus(a), torch.sigmoid(a) * ad


def _act_bwd(sig, gs: list[torch.Tensor]):
    """∂L/∂A from ∂L/∂S (T blocks of [n_pairs, F])."""
    return torch.cat(gs, 1) * sig


def _act_d_bwd(sig, q, gs: list[torch.Tensor], gsd: list[torch.Tensor]):
    """(∂L/∂A, ∂L/∂A') from ∂L/∂S and ∂L/∂S' (T blocks each)."""
    gsd_ = torch.cat(gsd, 1)
    return torch.cat(gs, 1) * sig + gsd_ * q, gsd_ * sig


def _zeros_if_none(gs: list[torch.Tensor | None], like: torch.Tensor) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(like) for g in gs]


# purely elementwise: any thread count gives bitwise the same result
k_act, k_act_d, k_act_d_infer, k_act_bwd, k_act_d_bwd = (
    Kernel(f, threads=None) for f in (_act, _act_d, _act_d_infer, _act_bwd, _act_d_bwd))


def _first_layer_params(params: tuple[torch.Tensor, ...]):
    """All interactions' first filter layers side by side: W1 [n_rbf, T·F], b1 [T·F]."""
    w1 = torch.cat([w.t() for w in params[0::4]], 1)  # [n_rbf, T·F]
    b1 = torch.cat(params[1::4])  # [T·F]
    return w1, b1


def filter_forward(plan: FilterPlan, deriv: bool, params: tuple[torch.Tensor, ...], save: bool,
                   out: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None):
    """The filters (and derivatives). Returns (W list, W' list or [], saved tensors or None).

    First layers of all T blocks as one product per chunk over the chunk's window of Gaussians,
    ``A [n_pairs, T·F] = g[:, k0:k1] @ W1[k0:k1] + b1`` (and ``A' = g' @ W1``); the activations of
    all of them in one fused elementwise pass; the second layers per block. ``out`` (inference
    only): [n_pairs, F] destinations of the T filters and derivatives, written in place.
    """
    w1, b1 = _first_layer_params(params)
    w2, b2 = params[2::4], params[3::4]  # T × [F_out, F_in], T × [F]
    T, Fn = len(w2), w2[0].shape[0]
    d = plan.d
    P = d.numel()
    A = d.new_empty(P, T * Fn)
    AD = d.new_empty(P, T * Fn) if deriv else None
    gauss = []
    for p0, p1, k0, k1 in plan.chunks:
        if k1 > k0:
            delta = d[p0:p1, None] - plan.centers[k0:k1]  # [Pc, K]
            g = torch.exp(delta * delta * -plan.gamma)
            torch.addmm(b1, g, w1[k0:k1], out=A[p0:p1])
            gd = None
            if deriv:
                gd = g * delta * (-2.0 * plan.gamma)  # dg/dd
                torch.mm(gd, w1[k0:k1], out=AD[p0:p1])
        else:  # every Gaussian negligible (distance beyond the basis)
            g = gd = None
            A[p0:p1] = b1
            if deriv:
                AD[p0:p1] = 0.0
        gauss.append((g, gd))
    c = plan.compiled
    Q = sig = Sd = None
    if not deriv:
        S, sig = k_act(c, A)
    elif save:
        S, sig, Sd, Q = k_act_d(c, A, AD)
    else:
        S, Sd = k_act_d_infer(c, A, AD)
    blk = [slice(t * Fn, (t + 1) * Fn) for t in range(T)]
    if out is not None:
        assert not save, "in-place filters are for inference"
        W = [torch.addmm(b2[t], S[:, blk[t]], w2[t].t(), out=out[0][t]) for t in range(T)]
        Wd = [torch.mm(Sd[:, blk[t]], w2[t].t(), out=out[1][t]) for t in range(T)] if deriv else []
        if plan.fcut is not None:
            fc, fcd = plan.fcut[:, None], plan.fcut_d[:, None]
            for w, wd in zip(W, Wd, strict=False):
                wd.mul_(fc).add_(w * fcd)
            for w in W:
                w.mul_(fc)
        return W, Wd, None
    W = [torch.addmm(b2[t], S[:, blk[t]], w2[t].t()) for t in range(T)]  # [n_pairs, F] each
    Wd = [torch.mm(Sd[:, blk[t]], w2[t].t()) for t in range(T)] if deriv else []
    if plan.fcut is not None:
        fc, fcd = plan.fcut[:, None], plan.fcut_d[:, None]
        if deriv:
            Wd = [wd * fc + w * fcd for w, wd in zip(W, Wd, strict=True)]
        W_uncut = W
        W = [w * fc for w in W]
    else:
        W_uncut = None
    saved = (w1, w2, S, sig, Sd, Q, gauss, W_uncut) if save else None
    return W, Wd, saved


class FilterBank(torch.autograd.Function):
    """``(plan, deriv, *params) → (W_1..W_B, W'_1..W'_B)``; params per block: W1, b1, W2, b2.

    Backward is first order only (``once_differentiable``): the training step needs the filters'
    parameter gradients once; the force graph is built outside, from ``∂E/∂W`` and ``W'``.
    """

    @staticmethod
    def forward(ctx, plan: FilterPlan, deriv: bool, *params: torch.Tensor):  # type: ignore[override]
        W, Wd, saved = filter_forward(plan, deriv, params, save=True)
        ctx.plan, ctx.deriv, ctx.saved = plan, deriv, saved
        return (*W, *Wd)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        plan, deriv = ctx.plan, ctx.deriv
        w1, w2, S, sig, Sd, Q, gauss, W_uncut = ctx.saved
        ctx.saved = None
        T, Fn = len(w2), w2[0].shape[0]
        gW = list(grads[:T])
        gWd = list(grads[T:]) if deriv else [None] * T
        if plan.fcut is not None:  # W = Wu·fc, W' = Wu'·fc + Wu·fc'
            fc, fcd = plan.fcut[:, None], plan.fcut_d[:, None]
            gWu = []
            for t in range(T):
                g = gW[t] * fc if gW[t] is not None else None
                if gWd[t] is not None:
                    extra = gWd[t] * fcd
                    g = extra if g is None else g + extra
                    gWd[t] = gWd[t] * fc
                gWu.append(g)
            gW = gWu
        blk = [slice(t * Fn, (t + 1) * Fn) for t in range(T)]
        gS: list[torch.Tensor | None] = []
        gSd: list[torch.Tensor | None] = []
        gw2, gb2 = [], []
        for t in range(T):
            acc = None
            if gW[t] is not None:
                gS.append(gW[t] @ w2[t])
                acc = gW[t].t() @ S[:, blk[t]]
                gb2.append(gW[t].sum(0))
            else:
                gS.append(None)
                gb2.append(S.new_zeros(Fn))
            if gWd[t] is not None:
                gSd.append(gWd[t] @ w2[t])
                acc = gWd[t].t() @ Sd[:, blk[t]] if acc is None else torch.addmm(acc, gWd[t].t(), Sd[:, blk[t]])
            else:
                gSd.append(None)
            gw2.append(acc if acc is not None else S.new_zeros(Fn, Fn))
        P = S.shape[0]
        like = S.new_zeros(P, Fn) if any(g is None for g in gS + (gSd if deriv else [])) else None
        c = plan.compiled
        if deriv and any(g is not None for g in gSd):
            ga, gad = k_act_d_bwd(c, sig, Q, _zeros_if_none(gS, like), _zeros_if_none(gSd, like))
        else:
            ga, gad = k_act_bwd(c, sig, _zeros_if_none(gS, like)), None
        gw1 = S.new_zeros(w1.shape)  # [n_rbf, T·F]
        gb1 = ga.sum(0)  # [T·F]
        for (p0, p1, k0, k1), (g, gd) in zip(plan.chunks, gauss, strict=True):
            if g is None:
                continue
            if gad is not None:
                gw1[k0:k1] += torch.addmm(g.t() @ ga[p0:p1], gd.t(), gad[p0:p1])  # windows may overlap
            else:
                gw1[k0:k1] += g.t() @ ga[p0:p1]
        grads_out: list[torch.Tensor | None] = [None, None]
        for t in range(T):
            grads_out += [gw1[:, blk[t]].t(), gb1[blk[t]], gw2[t], gb2[t]]
        return tuple(grads_out)
