"""Fast continuous filters of all interactions at once, with their distance derivatives.

The filter of interaction t for a pair at distance d is

    W_t(d) = Dense(F→F)( ssp( Dense(n_rbf→F)( g(d) ) ) ) · f_cut(d),   g_k(d) = exp(−γ (d − μ_k)²)

It depends on the distance only. :class:`FilterBank` computes, for every pair, ``W_t(d)`` and the
derivative ``W_t'(d) = dW_t/dd`` (forward mode, needed for forces) of all interactions in one
pass, and the gradients of both with respect to the filter parameters in its backward. Forces are
then ``∂E/∂d = Σ_t ⟨∂E/∂W_t, W_t'⟩`` (see :meth:`SchNet.forward`): no autograd graph through the
radial basis, no second derivative of the Gaussians, and in training the filter network is
differentiated once (a first-order backward of this Function), not twice.

Work saved against the dense formulation:

- pairs are processed sorted by distance in chunks; each chunk multiplies only the window of
  Gaussians that are non-negligible for its distance range (:meth:`GaussianRBF.window`, about 35
  of 300 per chunk for molecules, see :func:`truncation_radius` for the bound: each dropped value
  is below eps·2⁻¹⁰);
- the first layers of all interactions read the same Gaussians: one batched product;
- chunk-sized elementwise work (activations, their derivatives) stays in cache.

The distances are constants here (no gradient flows to them): :class:`SchNet` uses this path
only where positions are its own leaf, whose gradient nobody reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

LN2 = math.log(2.0)


@dataclass
class FilterPlan:
    """Distances sorted ascending, their chunks and Gaussian windows, the cutoff values."""

    d: torch.Tensor  # [n_pairs] sorted ascending, no grad
    chunks: list[tuple[int, int, int, int]]  # (p0, p1, k0, k1): pairs [p0, p1), centres [k0, k1)
    centers: torch.Tensor  # [n_rbf] in the compute dtype
    gamma: float
    fcut: torch.Tensor | None = None  # [n_pairs] cutoff values
    fcut_d: torch.Tensor | None = None  # [n_pairs] their derivative


def make_plan(d_sorted: torch.Tensor, rbf, fcut=None, fcut_d=None, chunk: int = 1024) -> FilterPlan:
    """Chunks of ``chunk`` consecutive (sorted) pairs, each with its window of Gaussians."""
    n = d_sorted.numel()
    bounds = list(range(0, n, chunk)) + [n]
    if n:
        lo_hi = d_sorted[torch.tensor([min(b, n - 1) for b in bounds], device=d_sorted.device)].tolist()
    chunks = []
    for c in range(len(bounds) - 1):
        p0, p1 = bounds[c], bounds[c + 1]
        d_lo, d_hi = lo_hi[c], lo_hi[c + 1]  # d[p0] and d[min(p1, n − 1)] ≥ d[p1 − 1]
        k0, k1 = rbf.window(d_lo, d_hi, d_sorted.dtype)
        chunks.append((p0, p1, k0, k1))
    return FilterPlan(d_sorted, chunks, rbf.centers_as(d_sorted), rbf.gamma, fcut, fcut_d)


def _stack_params(params: tuple[torch.Tensor, ...]):
    w1 = torch.stack(params[0::4])  # [T, F, n_rbf]
    b1 = torch.stack(params[1::4])[:, None, :]  # [T, 1, F]
    w2 = params[2::4]  # T × [F_out, F_in]
    b2 = params[3::4]  # T × [F]
    return w1, b1, w2, b2


def filter_forward(plan: FilterPlan, deriv: bool, params: tuple[torch.Tensor, ...], save: bool):
    """The filters (and derivatives). Returns (W list, W' list or [], saved tensors or None)."""
    w1, b1, w2, b2 = _stack_params(params)
    T, Fn = w1.shape[0], w1.shape[1]
    d = plan.d
    P = d.numel()
    S = d.new_empty(T, P, Fn)  # ssp(A)
    sig = d.new_empty(T, P, Fn)  # ssp'(A) = sigmoid(A)
    Sd = d.new_empty(T, P, Fn) if deriv else None  # dS/dd = sigmoid(A) · A'
    Q = d.new_empty(T, P, Fn) if (deriv and save) else None  # sigmoid'(A) · A' = Sd · (1 − sigmoid)
    gauss = []
    for p0, p1, k0, k1 in plan.chunks:
        dc = d[p0:p1, None]
        if k1 > k0:
            delta = dc - plan.centers[k0:k1]  # [Pc, K]
            g = torch.exp(delta * delta * -plan.gamma)
            w1w = w1[:, :, k0:k1].transpose(1, 2)  # [T, K, F]
            a = torch.baddbmm(b1, g.expand(T, -1, -1), w1w)  # [T, Pc, F]
        else:  # every Gaussian negligible (distance beyond the basis)
            g = delta = None
            a = b1.expand(T, p1 - p0, Fn)
        torch.sigmoid(a, out=sig[:, p0:p1])
        torch.sub(F.softplus(a), LN2, out=S[:, p0:p1])
        gd = None
        if deriv:
            if g is not None:
                gd = g * delta * (-2.0 * plan.gamma)  # dg/dd
                ad = torch.bmm(gd.expand(T, -1, -1), w1w)  # A' [T, Pc, F]
                torch.mul(sig[:, p0:p1], ad, out=Sd[:, p0:p1])
                if Q is not None:
                    torch.addcmul(Sd[:, p0:p1], Sd[:, p0:p1], sig[:, p0:p1], value=-1.0, out=Q[:, p0:p1])
            else:
                Sd[:, p0:p1] = 0.0
                if Q is not None:
                    Q[:, p0:p1] = 0.0
        gauss.append((g, gd))
    W = [torch.addmm(b2[t], S[t], w2[t].t()) for t in range(T)]
    Wd = [torch.mm(Sd[t], w2[t].t()) for t in range(T)] if deriv else []
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
    """``(plan, deriv, *params) → (W_1..W_T, W'_1..W'_T)``; params per interaction: W1, b1, W2, b2.

    Backward is first order only (``once_differentiable``): the training step needs the filters'
    parameter gradients once; the force graph is built outside, from ``∂E/∂W`` and ``W'``.
    """

    @staticmethod
    def forward(ctx, plan: FilterPlan, deriv: bool, *params: torch.Tensor):  # type: ignore[override]
        W, Wd, saved = filter_forward(plan, deriv, params, save=True)
        ctx.plan, ctx.deriv, ctx.saved = plan, deriv, saved
        ctx.n_rbf = params[0].shape[1]
        return (*W, *Wd)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        plan, deriv = ctx.plan, ctx.deriv
        w1, w2, S, sig, Sd, Q, gauss, W_uncut = ctx.saved
        ctx.saved = None
        T, Fn = w1.shape[0], w1.shape[1]
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
        P = S.shape[1]
        # every row block is written by an mm below unless its gradient is absent (then zeros)
        gS = S.new_empty(T, P, Fn) if all(g is not None for g in gW) else S.new_zeros(T, P, Fn)
        if all(g is not None for g in gWd):
            gSd = S.new_empty(T, P, Fn)
        else:
            gSd = S.new_zeros(T, P, Fn) if any(g is not None for g in gWd) else None
        grads_out: list[torch.Tensor | None] = [None, None]
        gw2, gb2 = [], []
        for t in range(T):
            acc = None
            if gW[t] is not None:
                torch.mm(gW[t], w2[t], out=gS[t])
                acc = gW[t].t() @ S[t]
                gb2.append(gW[t].sum(0))
            else:
                gb2.append(S.new_zeros(Fn))
            if gWd[t] is not None:
                torch.mm(gWd[t], w2[t], out=gSd[t])
                acc = gWd[t].t() @ Sd[t] if acc is None else torch.addmm(acc, gWd[t].t(), Sd[t])
            gw2.append(acc if acc is not None else S.new_zeros(Fn, Fn))
        gw1 = S.new_zeros(T, Fn, ctx.n_rbf)
        gb1 = S.new_zeros(T, Fn)
        for (p0, p1, k0, k1), (g, gd) in zip(plan.chunks, gauss, strict=True):
            s = sig[:, p0:p1]
            ga = gS[:, p0:p1] * s  # ∂/∂A through S
            if gSd is not None:
                gsd = gSd[:, p0:p1]
                ga.addcmul_(gsd, Q[:, p0:p1])  # ∂/∂A through S' = sigmoid(A)·A'
                gad = gsd * s  # ∂/∂A'
            gb1 += ga.sum(1)
            if g is None:
                continue
            gw = torch.bmm(ga.transpose(1, 2), g.expand(T, -1, -1))  # [T, F, K]
            if gSd is not None:
                gw = torch.baddbmm(gw, gad.transpose(1, 2), gd.expand(T, -1, -1))
            gw1[:, :, k0:k1] += gw
        for t in range(T):
            grads_out += [gw1[t], gb1[t], gw2[t], gb2[t]]
        return tuple(grads_out)
