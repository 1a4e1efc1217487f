"""The atom-wise network of k members and its explicit energy backward, as one function of the filters.

Given the filters ``W_t`` of the T interactions on the pairs (``[k, n_pairs, F]`` each; with
unordered pairs the same row serves the messages i ← j and j ← i) and their distance derivatives
``W'_t``, this computes every member's atom-wise outputs ``y`` and forces:

- forward: ``x ← x + f2out(cfconv(W_t, in2f(x)))`` for each interaction, then the output MLP,
  each dense layer one batched product over the member axis;
- forces: ``∂E/∂(atom features)`` written out through the dense layers, ssp and cfconvs (the
  network is a chain of them), ``∂E/∂d_p = Σ_t ⟨W'_t,p, outer(∂E/∂m_t, h_t)_p⟩``, and
  ``F = −∂E/∂R`` through the pair unit vectors.

Gathers and scatter-adds run on the member axis flattened into the atom axis (``k·n_atoms`` rows,
pair indices offset by ``m·n_atoms``), so k members cost the same number of operations as one.
It is plain tensor code with no autograd tricks: forces are an ordinary differentiable function
of the parameters and filters, so a training step backpropagates once through it (no double
backward). On CPU, :func:`atomwise` runs it compiled by ``torch.compile`` as **one graph** —
forward, and through AOTAutograd its parameter backward — instead of ~150 small operations each
way. The compiled loops run on one thread, so the scatter-adds happen in a fixed order (results
are bitwise reproducible for any thread count; the matrix products inside use torch's threads).
"""

from __future__ import annotations

import torch

from schnet_model.nn.activations import shifted_softplus
from schnet_model.nn.batched import bmm, linear
from schnet_model.nn.compiled import Kernel

# per interaction: in2f W [k, F, A], f2out[0] W [k, A, F], b [k, A], f2out[1] W [k, A, A], b [k, A]
Layers = list[tuple[torch.Tensor, ...]]


def cfconv(w: torch.Tensor, h: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor, directed: bool) -> torch.Tensor:
    """``out_a = Σ_{p ∋ a} W_p ∘ h_other(p, a)``; w [k·P, F], h [k·A, F] (flattened) → [k·A, F].

    Unordered pairs (``directed=False``) send messages both ways through one filter row; with a
    symmetric pair set this is its own transpose (it is also ``∂/∂h`` of itself).
    """
    out = torch.zeros_like(h).index_add_(0, gi, w * h[gj])
    return out if directed else out.index_add_(0, gj, w * h[gi])


def outer_dot(g: torch.Tensor, h: torch.Tensor, wd: torch.Tensor, gi: torch.Tensor, gj: torch.Tensor) -> torch.Tensor:
    """``⟨W'_p, g_i ∘ h_j + g_j ∘ h_i⟩``: one interaction's ``∂E/∂d_p``; [k·P]."""
    return (wd * (g[gi] * h[gj] + g[gj] * h[gi])).sum(1)


def _atomwise(
    x: torch.Tensor,  # [k, n_atoms, n_atom_basis] embeddings
    ws: list[torch.Tensor],  # T × [k, n_pairs, F] filters
    wds: list[torch.Tensor],  # T × [k, n_pairs, F] their distance derivatives (empty: no forces)
    gi: torch.Tensor,  # [k·n_pairs] first atom of each pair, offset by member·n_atoms
    gj: torch.Tensor,  # [k·n_pairs] second atom
    unit: torch.Tensor,  # [k or 1, n_pairs, 3] (R_j − R_i)/d
    layers: Layers,
    head: tuple[torch.Tensor, ...],  # output[0] W [k, H, A], b [k, H], output[1] W [k, 1, H], b [k, 1]
    scale: torch.Tensor,  # [k] energy scale (∂E/∂y per atom)
    forces: bool,
    directed: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    k, n, _ = x.shape
    flat = lambda t: t.flatten(0, 1)  # noqa: E731  [k, n, F] → [k·n, F]
    hs, zs = [], []
    for (w_in, w0, b0, w1, b1), w in zip(layers, ws, strict=True):
        h = flat(linear(x, w_in))  # [k·n_atoms, F]
        m = cfconv(flat(w), h, gi, gj, directed).view(k, n, -1)  # [k, n_atoms, F]
        z = linear(m, w0, b0)  # [k, n_atoms, n_atom_basis]
        x = x + linear(shifted_softplus(z), w1, b1)
        hs.append(h)
        zs.append(z)
    h0, c0, h1, c1 = head
    o = linear(x, h0, c0)  # [k, n_atoms, hidden]
    y = linear(shifted_softplus(o), h1, c1)[..., 0]  # [k, n_atoms]
    if not forces:
        return y, None
    gx = bmm(torch.sigmoid(o) * (h1 * scale[:, None, None]), h0)  # ∂E/∂x after the last interaction
    dedd = None
    for t in range(len(layers) - 1, -1, -1):
        w_in, w0, _, w1, _ = layers[t]
        gz = bmm(gx, w1) * torch.sigmoid(zs[t])
        gm = flat(bmm(gz, w0))  # ∂E/∂m_t, m_t = cfconv(W_t, h_t)
        gd = outer_dot(gm, hs[t], flat(wds[t]), gi, gj)
        dedd = gd if dedd is None else dedd + gd
        if t:  # ∂E/∂x before interaction t (the embedding's is not needed)
            gx = gx + bmm(cfconv(flat(ws[t]), gm, gi, gj, False).view(k, n, -1), w_in)
    fvec = (dedd.view(k, -1, 1) * unit).reshape(-1, 3)  # ∂E/∂R_j = ∂E/∂d_p · u_p = −∂E/∂R_i
    f = torch.zeros(k * n, 3, dtype=x.dtype, device=x.device).index_add_(0, gi, fvec).index_add_(0, gj, -fvec)
    return y, f.view(k, n, 3)  # f = −∂E/∂R


_kernel = Kernel(_atomwise, threads=1)


def atomwise(compiled: bool, x: torch.Tensor, ws: list[torch.Tensor], wds: list[torch.Tensor], gi: torch.Tensor,
             gj: torch.Tensor, unit: torch.Tensor, layers: Layers, head: tuple[torch.Tensor, ...],
             scale: torch.Tensor, forces: bool, directed: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y [k, n_atoms], F [k, n_atoms, 3] or None)``; compiled as one graph when ``compiled`` (CPU).

    Explicit forces need unordered pairs (``directed=False``); directed lists take forces by autograd.
    """
    return _kernel(compiled, x, ws, wds, gi, gj, unit, layers, head, scale, forces and not directed, directed)
