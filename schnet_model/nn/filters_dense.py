"""Continuous filters of k members over all Gaussians: static shapes, no host synchronisation.

``W_t(d) = Dense(F→F)(ssp(Dense(n_rbf→F)(g(d)))) · f_cut(d)`` with all ``n_rbf`` Gaussians per
pair, and (forward mode) ``W'_t = dW_t/dd``. Plain tensor operations: autograd gives the parameter
gradients, and the distance gradients too when ``d`` requires grad (forces by autograd). This is
the path for GPUs (one product per layer, graph-capturable) and for forces by autograd; on CPU
the windowed filters (:mod:`schnet_model.nn.filters`) do the same work on ~35 of 300 Gaussians.
"""

from __future__ import annotations

import torch

from schnet_model.config import ModelConfig
from schnet_model.nn.activations import shifted_softplus
from schnet_model.nn.radial import cosine_cutoff, rbf_centers


def first_layer(p: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All interactions' first filter layers side by side: W1 [k, T·F, n_rbf], b1 [k, T·F]."""
    T = cfg.n_interactions
    w1 = torch.cat([p[f"interactions.{t}.filter_net.0.0.weight"] for t in range(T)], 1)
    b1 = torch.cat([p[f"interactions.{t}.filter_net.0.0.bias"] for t in range(T)], 1)
    return w1, b1


def dense_filters(p: dict[str, torch.Tensor], cfg: ModelConfig, d: torch.Tensor, deriv: bool
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Filters of every member and interaction for distances ``d`` [kz, P] (kz = 1: shared by all k).

    Returns (T × W [k, P, F], T × W' [k, P, F] or []), cutoff included.
    """
    k, T, Fn = p["embedding.weight"].shape[0], cfg.n_interactions, cfg.n_filters
    kz, P = d.shape
    centers = rbf_centers(cfg.n_rbf, cfg.rbf_spacing, d.dtype, d.device)  # [n_rbf]
    delta = d[..., None] - centers  # [kz, P, n_rbf]
    g = torch.exp(delta * delta * -cfg.gamma)  # [kz, P, n_rbf]
    gd = g * delta * (-2.0 * cfg.gamma) if deriv else None  # dg/dd
    w1, b1 = first_layer(p, cfg)  # [k, T·F, n_rbf], [k, T·F]
    if kz == 1 and k > 1:  # shared distances: one product for all members, columns (member, filter)
        cols = w1.reshape(k * T * Fn, -1).t()  # [n_rbf, k·T·F]
        mk = lambda x: (x[0] @ cols).view(P, k, T * Fn).transpose(0, 1)  # noqa: E731  [k, P, T·F]
    else:
        mk = lambda x: torch.bmm(x.expand(k, -1, -1), w1.transpose(1, 2))  # noqa: E731
    a = mk(g) + b1[:, None]  # [k, P, T·F]
    s = shifted_softplus(a)
    sd = torch.sigmoid(a) * mk(gd) if gd is not None else None  # d ssp(A)/dd
    W, Wd = [], []
    for t in range(T):
        blk = slice(t * Fn, (t + 1) * Fn)
        w2 = p[f"interactions.{t}.filter_net.1.weight"]  # [k, F, F]
        W.append(torch.baddbmm(p[f"interactions.{t}.filter_net.1.bias"][:, None], s[..., blk], w2.transpose(1, 2)))
        if sd is not None:
            Wd.append(torch.bmm(sd[..., blk], w2.transpose(1, 2)))
    if cfg.cutoff is not None:
        fc, fcd = (f[..., None] for f in cosine_cutoff(d, cfg.cutoff))  # [kz, P, 1]
        Wd = [wd * fc + w * fcd for w, wd in zip(W, Wd, strict=True)] if deriv else []
        W = [w * fc for w in W]
    return W, Wd
