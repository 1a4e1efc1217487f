"""The atom-wise network and its explicit energy backward, as one function of the filters.

Given the filters ``W_t`` of the T interactions on unordered pairs (``[n_pairs, F]`` each, the
same row serving the messages i ← j and j ← i) and their distance derivatives ``W'_t``, this
computes the atom-wise outputs ``y`` and the forces:

- forward: ``x ← x + f2out(cfconv(W_t, in2f(x)))`` for each interaction, then the output MLP;
- forces: ``∂E/∂(atom features)`` written out through the dense layers, ssp and cfconvs (the
  network is a chain of them), ``∂E/∂d_p = Σ_t ⟨W'_t,p, outer(∂E/∂m_t, h_t)_p⟩``, and
  ``F = −∂E/∂R`` through the pair unit vectors.

It is plain tensor code with no autograd tricks: forces are an ordinary differentiable function
of the parameters and filters, so a training step backpropagates once through it (no double
backward). On CPU, :func:`atomwise` runs it compiled by ``torch.compile`` as **one graph** —
forward, and through AOTAutograd its parameter backward — instead of ~150 small operations
each way, which is what a 9-atom molecule's training step is otherwise made of. The compiled
loops run on one thread, so the scatter-adds happen in a fixed order (results are bitwise
reproducible for any thread count; the matrix products inside still use torch's threads).
"""

from __future__ import annotations

import torch

from schnet_model.nn.activations import shifted_softplus
from schnet_model.nn.compiled import Kernel

Layers = list[tuple[torch.Tensor, ...]]  # per interaction: in2f W, f2out[0] W, b, f2out[1] W, b


def cfconv(w: torch.Tensor, h: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor) -> torch.Tensor:
    """``out_a = Σ_{p ∋ a} W_p ∘ h_other(p, a)`` over unordered pairs; [n_atoms, F].

    With a symmetric pair set this is its own transpose (it is also ``∂/∂h`` of itself).
    """
    return torch.zeros_like(h).index_add_(0, pi, w * h[pj]).index_add_(0, pj, w * h[pi])


def outer_dot(g: torch.Tensor, h: torch.Tensor, wd: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor) -> torch.Tensor:
    """``⟨W'_p, g_i ∘ h_j + g_j ∘ h_i⟩``: one interaction's ``∂E/∂d_p``; [n_pairs]."""
    return (wd * (g[pi] * h[pj] + g[pj] * h[pi])).sum(1)


def _atomwise(
    x: torch.Tensor,  # [n_atoms, n_atom_basis] embeddings
    ws: list[torch.Tensor],  # T × [n_pairs, F] filters
    wds: list[torch.Tensor],  # T × [n_pairs, F] their distance derivatives (empty: no forces)
    pi: torch.Tensor,  # [n_pairs] i < j
    pj: torch.Tensor,  # [n_pairs]
    unit: torch.Tensor,  # [n_pairs, 3] (R_j − R_i)/d
    layers: Layers,
    head: tuple[torch.Tensor, ...],  # output[0] W, b, output[1] W, b
    scale: torch.Tensor,  # [] energy scale (∂E/∂y per atom)
    forces: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    hs, zs = [], []
    for (w_in, w0, b0, w1, b1), w in zip(layers, ws, strict=True):
        h = x @ w_in.t()  # [n_atoms, F]
        z = torch.addmm(b0, cfconv(w, h, pi, pj), w0.t())  # [n_atoms, n_atom_basis]
        x = x + torch.addmm(b1, shifted_softplus(z), w1.t())
        hs.append(h)
        zs.append(z)
    h0, c0, h1, c1 = head
    o = torch.addmm(c0, x, h0.t())  # [n_atoms, hidden]
    y = (shifted_softplus(o) @ h1.t()).squeeze(-1) + c1  # [n_atoms]
    if not forces:
        return y, None
    gx = (torch.sigmoid(o) * (h1 * scale)) @ h0  # ∂E/∂x after the last interaction
    dedd = None
    for t in range(len(layers) - 1, -1, -1):
        w_in, w0, _, w1, _ = layers[t]
        gz = (gx @ w1) * torch.sigmoid(zs[t])
        gm = gz @ w0  # ∂E/∂m_t, m_t = cfconv(W_t, h_t)
        gd = outer_dot(gm, hs[t], wds[t], pi, pj)
        dedd = gd if dedd is None else dedd + gd
        if t:  # ∂E/∂x before interaction t (the embedding's is not needed)
            gx = gx + cfconv(ws[t], gm, pi, pj) @ w_in
    fvec = dedd[:, None] * unit  # ∂E/∂R_j = ∂E/∂d_p · u_p = −∂E/∂R_i
    f = torch.zeros(x.shape[0], 3, dtype=x.dtype, device=x.device).index_add_(0, pi, fvec).index_add_(0, pj, -fvec)
    return y, f  # f = −∂E/∂R


_kernel = Kernel(_atomwise, threads=1)


def atomwise(compiled: bool, x: torch.Tensor, ws: list[torch.Tensor], wds: list[torch.Tensor], pi: torch.Tensor,
             pj: torch.Tensor, unit: torch.Tensor, layers: Layers, head: tuple[torch.Tensor, ...],
             scale: torch.Tensor, forces: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y [n_atoms], F [n_atoms, 3] or None)``; compiled as one graph when ``compiled`` (CPU)."""
    return _kernel(compiled, x, ws, wds, pi, pj, unit, layers, head, scale, forces)
