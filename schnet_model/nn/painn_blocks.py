"""PaiNN's filters, message and update blocks and output head for k members, with their explicit energy backward.

Given the radial basis of the pairs (and its distance derivative), this computes every member's atom-wise energies
``y`` and, with forces, ``∂E/∂R`` written out block by block in reverse:

- forward (schnetpack 2.1.1's ``PaiNN``, see :mod:`schnet_model.nn.painn`): filters ``W = (φ Wᶠᵀ + bᶠ)·f_cut``; per
  block the interaction (messages ``W ∘ x_j`` split into ``Δq``, ``Δμ = b ⊗ u + c ∘ μ_j``, summed on the receiver)
  and the mixing (``v, w = μ Wᵐ``, ``‖v‖``, the context MLP, ``q += a + c·⟨v, w⟩``, ``μ += b ∘ w``);
- backward: ``∂E/∂q`` and ``∂E/∂μ`` carried back through the mixing and interaction of each block (the stored
  activations reused, no autograd), collecting ``∂E/∂W`` per pair and ``∂E/∂u`` per directed message, then
  ``∂E/∂d = ⟨∂E/∂W·f_cut Wᶠ, φ'⟩ + f_cut'·⟨∂E/∂W, φ Wᶠᵀ + bᶠ⟩`` and ``∂E/∂R`` through the pair vectors.

It is plain tensor code: the forces are an ordinary differentiable function of the parameters, so a training step
backpropagates once through it (no double backward through autograd's graph of the forward). On CPU it can run
compiled by ``torch.compile`` as one graph (:class:`~schnet_model.nn.compiled.Kernel`), as SchNet's atom-wise network
does.

Pairs: ``gi``/``gj`` are the receiving and sending atoms of the D directed messages, flattened over the member
axis (``k·n_atoms`` rows). With ``both`` the first P messages are the unordered pairs (i ← j) and the next P the same
pairs reversed (j ← i), sharing one filter row and with opposite directions; otherwise every message has its own pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as fn

from schnet_model.nn.batched import bmm, linear
from schnet_model.nn.compiled import Kernel

# per block: interatomic context net W1 [k, F, F], b1, W2 [k, 3F, F], b2 [k, 3F]; intra-atomic context net
# W3 [k, F, 2F], b3, W4 [k, 3F, F], b4; mu channel mix Wm [k, 2F, F]
Blocks = list[tuple[torch.Tensor, ...]]


def _silu_grad(h: torch.Tensor) -> torch.Tensor:
    """``d silu / dh`` elementwise."""
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def _scatter(rows: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[index[e]] += values[e]``: [rows, ...]."""
    return values.new_zeros((rows, *values.shape[1:])).index_add_(0, index, values)


def _blocks(
    q: torch.Tensor,  # [k, n, F] embeddings (scalar features before block 0)
    phi: torch.Tensor,  # [k, P, n_rbf] radial basis sin(nπd/r_c)/d of the pairs
    dphi: torch.Tensor,  # [k, P, n_rbf] its distance derivative (unused without forces)
    fc: torch.Tensor,  # [k, P] cosine cutoff
    dfc: torch.Tensor,  # [k, P] its derivative
    u: torch.Tensor,  # [k, P, 3] unit vectors from receiver to sender, (R_j − R_i)/d
    inv_d: torch.Tensor,  # [k, P] 1/d
    gi: torch.Tensor,  # [k·D] receivers, offset by member·n
    gj: torch.Tensor,  # [k·D] senders
    wf: torch.Tensor,  # [k, 3F or 3F·T, n_rbf] filter network
    bf: torch.Tensor,  # [k, 3F or 3F·T]
    blocks: Blocks,  # T blocks (one when interactions are shared)
    head: tuple[torch.Tensor, ...],  # output.0 W [k, H, F], b [k, H], output.1 W [k, 1, H], b [k, 1]
    scale: torch.Tensor,  # [k] energy scale (∂E/∂y per atom)
    n_blocks: int,  # T
    forces: bool,
    both: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    k, n, F = q.shape
    P = phi.shape[1]
    D = 2 * P if both else P
    T = n_blocks
    pre = linear(phi, wf, bf)  # [k, P, 3F(·T)] filters before the cutoff
    filters = pre * fc[..., None]
    per_block = [filters] * T if filters.shape[-1] == 3 * F else list(torch.split(filters, 3 * F, dim=-1))
    ud = (torch.cat([u, -u], dim=1) if both else u).reshape(k * D, 3, 1)  # [k·D, 3, 1] message directions
    mu = q.new_zeros((k, n, 3, F))
    saved = []
    for t in range(T):
        w1, b1, w2, b2, w3, b3, w4, b4, wm = blocks[t if len(blocks) > 1 else 0]
        # interaction: messages from the senders' scalar and vector features
        h1 = linear(q, w1, b1)  # [k, n, F]
        x = linear(fn.silu(h1), w2, b2).reshape(k * n, 3 * F)
        W = per_block[t]
        Wd = (torch.cat([W, W], dim=1) if both else W).reshape(k * D, 3 * F)  # [k·D, 3F]
        xj = x[gj]  # [k·D, 3F]
        a, b, c = torch.split(Wd * xj, F, dim=-1)  # [k·D, F] each
        if t:
            muj = mu.reshape(k * n, 3, F)[gj]  # [k·D, 3, F]
            dmu = b[:, None, :] * ud + c[:, None, :] * muj  # [k·D, 3, F]
        else:  # no vector features yet: μ = 0 before the first block
            muj, dmu = None, b[:, None, :] * ud
        q = q + _scatter(k * n, gi, a).view(k, n, F)
        mu = mu + _scatter(k * n, gi, dmu).view(k, n, 3, F)
        # mixing: the gated equivariant update within each atom
        vw = bmm(mu.reshape(k, n * 3, F), wm.transpose(1, 2)).view(k, n, 3, 2 * F)
        v, w = vw[..., :F], vw[..., F:]  # [k, n, 3, F]
        vn = torch.sqrt(torch.sum(v * v, dim=2) + eps)  # [k, n, F]
        h3 = linear(torch.cat([q, vn], dim=-1), w3, b3)  # [k, n, F]
        x2 = linear(fn.silu(h3), w4, b4)
        s_q, s_mu, s_qmu = x2[..., :F], x2[..., F:2 * F], x2[..., 2 * F:]  # [k, n, F] each
        vdotw = torch.sum(v * w, dim=2)  # [k, n, F]
        q = q + s_q + s_qmu * vdotw
        mu = mu + s_mu[:, :, None, :] * w
        saved.append((h1, Wd, xj, b, c, muj, v, w, vn, h3, s_mu, s_qmu, vdotw))
    h0, c0, h1w, c1 = head
    o = linear(q, h0, c0)  # [k, n, H]
    y = linear(fn.silu(o), h1w, c1)[..., 0]  # [k, n] atom-wise energies
    if not forces:
        return y, None
    gq = bmm(_silu_grad(o) * (h1w * scale.to(o.dtype)[:, None, None]), h0)  # ∂E/∂q after the last block
    gmu = torch.zeros_like(mu)
    g_filters: list[torch.Tensor] = []  # per block, [k, P, 3F]
    g_u = u.new_zeros((k * D, 3))  # ∂E/∂u per message
    for t in range(T - 1, -1, -1):
        w1, b1, w2, b2, w3, b3, w4, b4, wm = blocks[t if len(blocks) > 1 else 0]
        h1, Wd, xj, b, c, muj, v, w, vn, h3, s_mu, s_qmu, vdotw = saved[t]
        # mixing, in reverse
        g_vdotw = gq * s_qmu
        g_x2 = torch.cat([gq, torch.sum(gmu * w, dim=2), gq * vdotw], dim=-1)  # ∂E/∂(s_q, s_mu, s_qmu)
        g_in = bmm(bmm(g_x2, w4) * _silu_grad(h3), w3)  # [k, n, 2F] ∂E/∂(q, ‖v‖)
        gq = gq + g_in[..., :F]
        g_v = g_vdotw[:, :, None, :] * w + (g_in[..., F:] / vn)[:, :, None, :] * v
        g_w = gmu * s_mu[:, :, None, :] + g_vdotw[:, :, None, :] * v
        gmu = gmu + bmm(torch.cat([g_v, g_w], dim=-1).reshape(k, n * 3, 2 * F), wm).view(k, n, 3, F)
        # interaction, in reverse
        g_dmu = gmu.reshape(k * n, 3, F)[gi]  # [k·D, 3, F]
        g_u = g_u + torch.sum(g_dmu * b[:, None, :], dim=-1)
        g_c = torch.sum(g_dmu * muj, dim=1) if muj is not None else g_dmu.new_zeros((k * D, F))
        g_s = torch.cat([gq.reshape(k * n, F)[gi], torch.sum(g_dmu * ud, dim=1), g_c], dim=-1)  # [k·D, 3F]
        gW = (g_s * xj).view(k, D, 3 * F)
        g_filters.append(gW[:, :P] + gW[:, P:] if both else gW)
        if t:  # ∂E/∂(q, μ) before block t (the embedding's is not needed)
            gmu = gmu + _scatter(k * n, gj, g_dmu * c[:, None, :]).view(k, n, 3, F)
            g_x = _scatter(k * n, gj, g_s * Wd).view(k, n, 3 * F)
            gq = gq + bmm(bmm(g_x, w2) * _silu_grad(h1), w1)
    g_filters.reverse()
    gf = g_filters[0] if T == 1 else (sum(g_filters) if filters.shape[-1] == 3 * F else torch.cat(g_filters, -1))
    g_d = torch.sum(bmm(gf * fc[..., None], wf) * dphi, dim=-1) + dfc * torch.sum(gf * pre, dim=-1)  # [k, P]
    g_u = g_u.view(k, D, 3)
    g_up = g_u[:, :P] - g_u[:, P:] if both else g_u  # ∂E/∂u of each pair's own direction
    g_r = g_d[..., None] * u + (g_up - torch.sum(g_up * u, dim=-1, keepdim=True) * u) * inv_d[..., None]  # [k, P, 3]
    pi, pj = gi.view(k, D)[:, :P].reshape(-1), gj.view(k, D)[:, :P].reshape(-1)
    g_r = g_r.reshape(k * P, 3)
    f = _scatter(k * n, pi, g_r).index_add_(0, pj, -g_r)  # −∂E/∂R: ∂E/∂R_j = ∂E/∂r, ∂E/∂R_i = −∂E/∂r
    return y, f.view(k, n, 3)


_kernel = Kernel(_blocks, threads=1)


def painn_blocks(compiled: bool, q: torch.Tensor, phi: torch.Tensor, dphi: torch.Tensor, fc: torch.Tensor,
                 dfc: torch.Tensor, u: torch.Tensor, inv_d: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor,
                 wf: torch.Tensor, bf: torch.Tensor, blocks: Blocks, head: tuple[torch.Tensor, ...],
                 scale: torch.Tensor, n_blocks: int, forces: bool, both: bool, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y [k, n_atoms], F [k, n_atoms, 3] or None)``; compiled as one graph when ``compiled`` (CPU)."""
    return _kernel(compiled, q, phi, dphi, fc, dfc, u, inv_d, gi, gj, wf, bf, blocks, head, scale, n_blocks, forces,
                   both, eps)


__all__ = ["Blocks", "painn_blocks"]
