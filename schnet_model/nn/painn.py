"""PaiNN (Schütt, Unke & Gastegger, ICML 2021): one functional forward for k members with stacked weights.

The second model family of the member-axis core (issue 27, first step): the same :class:`~schnet_model.data.graph.Graph`
input as SchNet's core (one input shared by k members, or one per member), parameters keyed by name with a leading
member axis, energies assembled in float64 with the per-element offsets (:func:`schnet_model.nn.core.energies`),
forces ``−∂E/∂R`` by autograd through the positions.

The numerics are schnetpack 2.1.1's ``PaiNN`` + ``Atomwise`` (sum), name for name (without ``representation.``;
the output MLP is ``output.``): scalar features ``q`` [k, n_atoms, 1, F] and vector features ``mu``
[k, n_atoms, 3, F]; a radial basis ``sin(nπ r / r_c) / r`` (n = 1 … n_rbf) times a cosine cutoff; per block an
interaction (messages from neighbours j to i, both directions of every pair) and a mixing (gated equivariant
update). ``benchmarks/painn_reference.py`` records schnetpack's energies and forces for given weights;
``tests/test_painn.py`` holds this forward to them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as fn
from torch import nn

from schnet_model.config import PaiNNConfig
from schnet_model.data.batch import Batch
from schnet_model.data.graph import Graph
from schnet_model.nn.core import Params, energies
from schnet_model.nn.offsets import EnergyOffsets
from schnet_model.nn.pairs import unordered_pairs
from schnet_model.nn.radial import cosine_cutoff
from schnet_model.nn.schnet import Prediction


def painn_layout(cfg: PaiNNConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of one member's PaiNN parameters (float64 offsets included)."""
    F, T = cfg.n_atom_basis, cfg.n_interactions
    H = cfg.n_output_hidden or max(1, F // 2)
    out: dict[str, tuple[int, ...]] = {"embedding.weight": (cfg.max_z, F)}
    n_filters = 3 * F if cfg.shared_filters else 3 * F * T
    out |= {"filter_net.weight": (n_filters, cfg.n_rbf), "filter_net.bias": (n_filters,)}
    for t in range(1 if cfg.shared_interactions else T):
        i, m = f"interactions.{t}.interatomic_context_net.", f"mixing.{t}."
        out |= {i + "0.weight": (F, F), i + "0.bias": (F,), i + "1.weight": (3 * F, F), i + "1.bias": (3 * F,),
                m + "intraatomic_context_net.0.weight": (F, 2 * F), m + "intraatomic_context_net.0.bias": (F,),
                m + "intraatomic_context_net.1.weight": (3 * F, F), m + "intraatomic_context_net.1.bias": (3 * F,),
                m + "mu_channel_mix.weight": (2 * F, F)}
    out |= {"output.0.weight": (H, F), "output.0.bias": (H,), "output.1.weight": (1, H), "output.1.bias": (1,),
            "offsets.atomref": (cfg.max_z,), "offsets.scale": ()}
    return out


def init_painn(cfg: PaiNNConfig, k: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32) -> Params:
    """k members' parameters, each initialised as torch's ``nn.Linear`` / ``nn.Embedding`` would (offsets 0,
    scale 1)."""
    gen = torch.Generator().manual_seed(seed)
    p: Params = {}
    layout = painn_layout(cfg)
    for key, shape in layout.items():
        if key == "offsets.atomref":
            p[key] = torch.zeros((k, *shape), dtype=torch.float64)
        elif key == "offsets.scale":
            p[key] = torch.ones((k, *shape), dtype=torch.float64)
        elif key == "embedding.weight":
            p[key] = torch.randn((k, *shape), generator=gen, dtype=dtype)
        else:
            fan_in = shape[-1] if key.endswith("weight") else layout[key[: -len("bias")] + "weight"][-1]
            bound = 1.0 / math.sqrt(fan_in)
            p[key] = (torch.rand((k, *shape), generator=gen, dtype=dtype) * 2 - 1) * bound
    return p


def _dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Member-wise linear layer: x [k, ..., in], w [k, out, in], b [k, out] → [k, ..., out]."""
    k = x.shape[0]
    y = torch.matmul(x.reshape(k, -1, x.shape[-1]), w.transpose(1, 2)).reshape(*x.shape[:-1], w.shape[1])
    if b is not None:
        y = y + b.reshape(k, *([1] * (x.dim() - 2)), -1)
    return y


def painn_energies_forces(p: Params, cfg: PaiNNConfig, g: Graph, forces: bool = True, create_graph: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Energies [k, n_mols] float64 and forces ``−∂E/∂R`` [k, n_atoms, 3] (or None) of k PaiNN members.

    Args:
        p: stacked parameters (k members, :func:`painn_layout`).
        cfg: the members' architecture.
        g: the input, shared (leading axis 1) or per member (leading axis k); unordered pairs are used in both
            directions, directed ones as they are.
        forces: compute forces (autograd through the positions).
        create_graph: keep the graph through the forces (training on forces).
    """
    k = p["embedding.weight"].shape[0]
    dtype = p["embedding.weight"].dtype
    F, T = cfg.n_atom_basis, cfg.n_interactions
    with torch.set_grad_enabled(forces or torch.is_grad_enabled()):
        R = g.R if g.R.requires_grad or not forces else g.R.detach().requires_grad_(True)
        Rk = R.to(dtype)
        Z, mol, pi, pj = g.Z, g.mol, g.pi, g.pj
        if Rk.shape[0] != k:  # a shared input: one (differentiable) copy per member
            Rk, Z, mol, pi, pj = (t.expand(k, *t.shape[1:]) for t in (Rk, Z, mol, pi, pj))
        n = Z.shape[1]
        r_ij = (torch.gather(Rk, 1, pj[..., None].expand(-1, -1, 3))
                - torch.gather(Rk, 1, pi[..., None].expand(-1, -1, 3)))  # [k, P, 3] Å, from i to j
        d = torch.linalg.vector_norm(r_ij, dim=-1)  # [k, P]
        dir_ij = r_ij / d[..., None]
        freqs = torch.arange(1, cfg.n_rbf + 1, dtype=dtype, device=d.device) * (math.pi / cfg.cutoff)
        norm = torch.where(d == 0, torch.ones_like(d), d)
        phi = torch.sin(d[..., None] * freqs) / norm[..., None]  # [k, P, n_rbf]
        fcut, _ = cosine_cutoff(d, cfg.cutoff)
        filters = _dense(phi, p["filter_net.weight"], p["filter_net.bias"]) * fcut[..., None]  # [k, P, (T·)3F]
        if not g.directed:  # messages flow both ways along every pair: its filter once, its direction reversed
            pi, pj = torch.cat([pi, pj], dim=1), torch.cat([pj, pi], dim=1)
            filters, dir_ij = torch.cat([filters, filters], dim=1), torch.cat([dir_ij, -dir_ij], dim=1)
        off = (torch.arange(k, device=Z.device) * n)[:, None]
        gi, gj = (pi + off).reshape(-1), (pj + off).reshape(-1)  # [k·P] rows of the member-flattened atoms
        flist = [filters] * T if cfg.shared_filters else list(torch.split(filters, 3 * F, dim=-1))
        w = p["embedding.weight"]  # [k, max_z, F]
        q = fn.embedding(Z + (torch.arange(k, device=Z.device) * w.shape[1])[:, None],
                         w.reshape(-1, F))[:, :, None, :]  # [k, n, 1, F]
        mu = torch.zeros((k, n, 3, F), dtype=dtype, device=q.device)
        P = pi.shape[1]
        for t in range(T):
            b = 0 if cfg.shared_interactions else t
            # interaction: messages from the neighbours' scalar and vector features
            ic = f"interactions.{b}.interatomic_context_net."
            x = _dense(fn.silu(_dense(q, p[ic + "0.weight"], p[ic + "0.bias"])), p[ic + "1.weight"], p[ic + "1.bias"])
            xj = x.reshape(k * n, 1, 3 * F)[gj].reshape(k, P, 1, 3 * F)
            dq, dmu_r, dmu_mu = torch.split(flist[t][:, :, None, :] * xj, F, dim=-1)  # [k, P, 1, F] each
            muj = mu.reshape(k * n, 3, F)[gj].reshape(k, P, 3, F)
            dmu = dmu_r * dir_ij[..., None] + dmu_mu * muj  # [k, P, 3, F]
            q = q + torch.zeros_like(q).reshape(k * n, 1, F).index_add(0, gi, dq.reshape(k * P, 1, F)).reshape(q.shape)
            mu = mu + torch.zeros_like(mu).reshape(k * n, 3, F).index_add(0, gi, dmu.reshape(k * P, 3, F)).reshape(
                mu.shape)
            # mixing: the gated equivariant update within each atom
            m = f"mixing.{b}."
            mu_v, mu_w = torch.split(_dense(mu, p[m + "mu_channel_mix.weight"]), F, dim=-1)  # [k, n, 3, F] each
            mu_vn = torch.sqrt(torch.sum(mu_v**2, dim=-2, keepdim=True) + cfg.epsilon)  # [k, n, 1, F]
            cn = m + "intraatomic_context_net."
            x = _dense(fn.silu(_dense(torch.cat([q, mu_vn], dim=-1), p[cn + "0.weight"], p[cn + "0.bias"])),
                       p[cn + "1.weight"], p[cn + "1.bias"])
            dq_intra, dmu_intra, dqmu_intra = torch.split(x, F, dim=-1)
            q = q + dq_intra + dqmu_intra * torch.sum(mu_v * mu_w, dim=-2, keepdim=True)
            mu = mu + dmu_intra * mu_w
        h = fn.silu(_dense(q[:, :, 0, :], p["output.0.weight"], p["output.0.bias"]))
        y = _dense(h, p["output.1.weight"], p["output.1.bias"])[..., 0]  # [k, n] per-atom energies
        E = energies(p, y, Graph(Z, Rk, mol, g.n_mols, pi, pj, True))
        if not forces:
            return E, None
        (grad,) = torch.autograd.grad(E.sum(), Rk, create_graph=create_graph)
    return (E if create_graph else E.detach()), -grad


class _Interaction(nn.Module):
    def __init__(self, F: int) -> None:
        super().__init__()
        self.interatomic_context_net = nn.Sequential(nn.Linear(F, F), nn.Linear(F, 3 * F))


class _Mixing(nn.Module):
    def __init__(self, F: int) -> None:
        super().__init__()
        self.intraatomic_context_net = nn.Sequential(nn.Linear(2 * F, F), nn.Linear(F, 3 * F))
        self.mu_channel_mix = nn.Linear(F, 2 * F, bias=False)


class PaiNN(nn.Module):
    """PaiNN with an atom-wise energy head and forces ``F = −∂E/∂R`` (the modules hold the parameters, named as
    :func:`painn_layout`; the computation is :func:`painn_energies_forces` with k = 1).

    Args:
        config: architecture hyperparameters (see :class:`~schnet_model.config.PaiNNConfig`).
    """

    def __init__(self, config: PaiNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PaiNNConfig()
        F, T = config.n_atom_basis, config.n_interactions
        blocks = 1 if config.shared_interactions else T
        self.embedding = nn.Embedding(config.max_z, F, padding_idx=0)
        self.filter_net = nn.Linear(config.n_rbf, 3 * F if config.shared_filters else 3 * F * T)
        self.interactions = nn.ModuleList(_Interaction(F) for _ in range(blocks))
        self.mixing = nn.ModuleList(_Mixing(F) for _ in range(blocks))
        hidden = config.n_output_hidden or max(1, F // 2)
        self.output = nn.Sequential(nn.Linear(F, hidden), nn.Linear(hidden, 1))
        self.offsets = EnergyOffsets(config.max_z)

    def stacked(self) -> Params:
        """The parameters and energy offsets as :data:`Params` with k = 1 (views, gradients flow)."""
        return {name: t.unsqueeze(0) for name, t in {**dict(self.named_parameters()),
                                                      **dict(self.named_buffers())}.items()}

    def forward(self, batch: Batch, forces: bool = True, create_graph: bool = False) -> Prediction:
        """Energies (and forces) of a batch (positions in Å). A symmetric pair list is halved to unordered pairs
        (each pair's filter computed once)."""
        pi, pj, n_dir = unordered_pairs(batch.idx_i, batch.idx_j, batch.R.shape[0])
        graph = Graph(batch.Z[None], batch.R[None], batch.mol[None], batch.n_mols, pi[None], pj[None],
                      directed=n_dir != 2)
        E, F = painn_energies_forces(self.stacked(), self.config, graph, forces, create_graph)
        return Prediction(energy=E[0], forces=None if F is None else F[0].to(batch.R.dtype))

    def n_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


__all__ = ["PaiNN", "init_painn", "painn_energies_forces", "painn_layout"]
