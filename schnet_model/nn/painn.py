"""PaiNN (Schütt, Unke & Gastegger, ICML 2021): one functional forward for k members with stacked weights.

The second model family of the member-axis core: the same :class:`~schnet_model.data.graph.Graph` input as SchNet's
core (one input shared by k members, or one per member), parameters keyed by name with a leading member axis,
energies assembled in float64 with the per-element offsets (:func:`schnet_model.nn.core.energies`), forces
``−∂E/∂R`` from the explicit backward of :mod:`schnet_model.nn.painn_blocks` (compiled on CPU when asked), or by
autograd through the positions (``forces_by="autograd"``, or ``R`` requiring grad: second derivatives).

The numerics are schnetpack 2.1.1's ``PaiNN`` + ``Atomwise`` (sum), name for name (without ``representation.``;
the output MLP is ``output.``): scalar features ``q`` [k, n_atoms, F] and vector features ``mu``
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

from schnet_model.config import COMPILE_AFTER, PaiNNConfig
from schnet_model.data.batch import Batch
from schnet_model.data.graph import Graph
from schnet_model.nn.compiled import compile_now
from schnet_model.nn.core import ForcePath, Params, energies
from schnet_model.nn.offsets import EnergyOffsets
from schnet_model.nn.painn_blocks import painn_blocks
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


def _geometry(g: Graph, k: int, dtype: torch.dtype, cfg: PaiNNConfig, R: torch.Tensor
              ) -> tuple[torch.Tensor, ...]:
    """Per pair (expanded to k members): φ, φ', f_cut, f_cut' [k, P(, n_rbf)], unit vectors [k, P, 3] and 1/d."""
    pi, pj = (t.expand(R.shape[0], -1)[..., None].expand(-1, -1, 3) for t in (g.pi, g.pj))
    r_ij = torch.gather(R, 1, pj) - torch.gather(R, 1, pi)  # [kz, P, 3] Å, from i to j
    d = torch.linalg.vector_norm(r_ij, dim=-1)  # [kz, P]
    inv_d = 1.0 / torch.where(d == 0, torch.ones_like(d), d)
    # the sines in float64: torch 2.13's first float32 sin of a process on two threads can be off by 1e-4
    freqs = torch.arange(1, cfg.n_rbf + 1, dtype=torch.float64, device=d.device) * (math.pi / cfg.cutoff)
    arg = d.to(torch.float64)[..., None] * freqs  # [kz, P, n_rbf]
    phi = (torch.sin(arg) * inv_d[..., None]).to(dtype)
    dphi = ((freqs * torch.cos(arg)).to(dtype) - phi) * inv_d[..., None]
    fc, dfc = cosine_cutoff(d, cfg.cutoff)
    out = (phi, dphi, fc, dfc, r_ij * inv_d[..., None], inv_d)
    return tuple(t.expand(k, *t.shape[1:]) for t in out)


def painn_energies_forces(p: Params, cfg: PaiNNConfig, g: Graph, forces: bool = True, create_graph: bool = False,
                          forces_by: ForcePath = "explicit", compiled: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Energies [k, n_mols] float64 and forces ``−∂E/∂R`` [k, n_atoms, 3] (or None) of k PaiNN members.

    Args:
        p: stacked parameters (k members, :func:`painn_layout`).
        cfg: the members' architecture.
        g: the input, shared (leading axis 1) or per member (leading axis k); unordered pairs are used in both
            directions, directed ones as they are.
        forces: compute forces.
        create_graph: keep an autograd graph to the parameters through the forces (training on forces).
        forces_by: ``"explicit"`` backward (:mod:`schnet_model.nn.painn_blocks`), or ``"autograd"`` through the
            positions (also taken when ``g.R`` requires grad), which allows second derivatives.
        compiled: run the blocks compiled by ``torch.compile`` (CPU).
    """
    k = p["embedding.weight"].shape[0]
    dtype = p["embedding.weight"].dtype
    by_autograd = forces and (forces_by == "autograd" or g.R.requires_grad)
    track = torch.is_grad_enabled() and (create_graph or not forces or by_autograd)
    with torch.set_grad_enabled(track):
        R = g.R if g.R.requires_grad or not by_autograd else g.R.detach().requires_grad_(True)
        Rk = R.to(dtype)
        if by_autograd and Rk.shape[0] != k:  # a shared input: one (differentiable) copy per member
            Rk = Rk.expand(k, -1, -1)
        with torch.set_grad_enabled(by_autograd or (track and g.R.requires_grad)):
            phi, dphi, fc, dfc, u, inv_d = _geometry(g, k, dtype, cfg, Rk)
        Z, pi, pj = (t.expand(k, *t.shape[1:]) for t in (g.Z, g.pi, g.pj))
        if not g.directed:  # messages flow both ways along every pair (its filter computed once)
            pi, pj = torch.cat([pi, pj], dim=1), torch.cat([pj, pi], dim=1)
        n = Z.shape[1]
        off = (torch.arange(k, device=Z.device) * n)[:, None]
        gi, gj = (pi + off).reshape(-1), (pj + off).reshape(-1)  # [k·D] rows of the member-flattened atoms
        w = p["embedding.weight"]  # [k, max_z, F]
        q = fn.embedding(Z + (torch.arange(k, device=Z.device) * w.shape[1])[:, None], w.reshape(-1, w.shape[2]))
        blocks = [tuple(p[f"interactions.{b}.interatomic_context_net.{x}"] for x in ("0.weight", "0.bias", "1.weight",
                                                                                     "1.bias"))
                  + tuple(p[f"mixing.{b}.{x}"] for x in ("intraatomic_context_net.0.weight",
                                                         "intraatomic_context_net.0.bias",
                                                         "intraatomic_context_net.1.weight",
                                                         "intraatomic_context_net.1.bias", "mu_channel_mix.weight"))
                  for b in range(1 if cfg.shared_interactions else cfg.n_interactions)]
        head = tuple(p[f"output.{x}"] for x in ("0.weight", "0.bias", "1.weight", "1.bias"))
        y, f = painn_blocks(compiled, q, phi, dphi, fc, dfc, u, inv_d, gi, gj, p["filter_net.weight"],
                            p["filter_net.bias"], blocks, head, p["offsets.scale"], cfg.n_interactions,
                            forces and not by_autograd, not g.directed, cfg.epsilon)
        E = energies(p, y, Graph(Z, Rk, g.mol.expand(k, -1), g.n_mols, pi, pj, True))
        if not forces:
            return E, None
        if by_autograd:
            (grad,) = torch.autograd.grad(E.sum(), Rk, create_graph=create_graph)
            f = -grad
    if not create_graph:
        E, f = E.detach(), f.detach()
    return E, f


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
        self._fast_calls = 0  # explicit-path calls so far
        self.compile_after: int | None = COMPILE_AFTER  # CPU kernels compiled after this many calls (None: never)

    def stacked(self) -> Params:
        """The parameters and energy offsets as :data:`Params` with k = 1 (views, gradients flow)."""
        return {name: t.unsqueeze(0) for name, t in {**dict(self.named_parameters()),
                                                      **dict(self.named_buffers())}.items()}

    def forward(self, batch: Batch, forces: bool = True, create_graph: bool = False) -> Prediction:
        """Energies (and forces) of a batch (positions in Å). A symmetric pair list is halved to unordered pairs
        (each pair's filter computed once); forces come from the explicit backward, compiled on CPU after
        ``compile_after`` calls, or by autograd when the positions require grad."""
        pi, pj, n_dir = unordered_pairs(batch.idx_i, batch.idx_j, batch.R.shape[0])
        graph = Graph(batch.Z[None], batch.R[None], batch.mol[None], batch.n_mols, pi[None], pj[None],
                      directed=n_dir != 2)
        compiled = False
        if not batch.R.requires_grad:
            compiled = compile_now(self._fast_calls, self.compile_after, batch.R.device, "PaiNN")
            self._fast_calls += 1
        E, F = painn_energies_forces(self.stacked(), self.config, graph, forces, create_graph, compiled=compiled)
        return Prediction(energy=E[0], forces=None if F is None else F[0].to(batch.R.dtype))

    def n_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


__all__ = ["PaiNN", "init_painn", "painn_energies_forces", "painn_layout"]
