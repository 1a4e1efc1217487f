"""The SchNet core: one functional forward for k members with stacked weights.

Every SchNet evaluation in this package goes through :func:`energies_forces` (the trainer, the ensemble and the
export reach it, or PaiNN's, through :mod:`schnet_model.nn.family`):

- :class:`~schnet_model.nn.schnet.SchNet` is k = 1 (its parameters viewed with a member axis);
- :class:`~schnet_model.ensemble.Ensemble` is k members on one shared input (``Graph`` with
  a leading axis of 1: pairs, distances and Gaussians computed once);
- stacked fold training (:mod:`schnet_model.training.stacked`) is k members, each with its own
  batch (``Graph`` with a leading axis of k, padded to common sizes by the collation).

Parameters (:data:`Params`) are keyed by the :class:`SchNet` state-dict names, each with a leading
member axis: ``interactions.0.in2f.weight`` [k, F, A], ``offsets.atomref`` [k, max_z] float64, ….

Two filter paths compute the same function (up to the documented Gaussian-window truncation):
``"windowed"`` (:mod:`~schnet_model.nn.filters`: pairs sorted by distance, ~35 of 300 Gaussians
per chunk, host-side chunk bounds — the CPU path) and ``"dense"``
(:mod:`~schnet_model.nn.filters_dense`: all Gaussians, static shapes, no host synchronisation —
the GPU path). Forces come from the explicit backward of :mod:`~schnet_model.nn.atomwise` (one
first-order backward per training step), or by autograd through the positions (``R`` requiring
grad, directed pair lists, or ``forces_by="autograd"``), which allows second derivatives.
"""

from __future__ import annotations

from typing import Literal

import torch

from schnet_model.config import ModelConfig
from schnet_model.data.graph import Graph, per_molecule  # noqa: F401 (re-exported: the core's input)
from schnet_model.nn.atomwise import atomwise
from schnet_model.nn.filters import FilterBank, filter_forward, make_plan
from schnet_model.nn.filters_dense import dense_filters
from schnet_model.nn.radial import cosine_cutoff

Params = dict[str, torch.Tensor]  # state-dict name → [k, ...]
FilterPath = Literal["windowed", "dense"]
ForcePath = Literal["explicit", "autograd"]
OFFSET_KEYS = ("offsets.atomref", "offsets.scale")  # float64 buffers, never cast


class LayoutError(ValueError):
    """State dicts that do not match the SchNet layout of a configuration (one line)."""


def state_layout(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a :class:`SchNet` state dict with ``cfg``."""
    A, Fi, R = cfg.n_atom_basis, cfg.n_filters, cfg.n_rbf
    H = cfg.n_output_hidden or max(1, A // 2)
    out: dict[str, tuple[int, ...]] = {"embedding.weight": (cfg.max_z, A), "rbf.centers": (R,)}
    for i in range(cfg.n_interactions):
        p = f"interactions.{i}."
        out |= {p + "in2f.weight": (Fi, A),
                p + "filter_net.0.0.weight": (Fi, R), p + "filter_net.0.0.bias": (Fi,),
                p + "filter_net.1.weight": (Fi, Fi), p + "filter_net.1.bias": (Fi,),
                p + "f2out.0.0.weight": (A, Fi), p + "f2out.0.0.bias": (A,),
                p + "f2out.1.weight": (A, A), p + "f2out.1.bias": (A,)}
    out |= {"output.0.0.weight": (H, A), "output.0.0.bias": (H,), "output.1.weight": (1, H), "output.1.bias": (1,),
            "offsets.atomref": (cfg.max_z,), "offsets.scale": ()}
    return out


def _flat_pairs(g: Graph, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair indices into the member-flattened atom axis (k·n_atoms rows): [k·n_pairs] each."""
    off = (torch.arange(k, device=g.pi.device) * g.Z.shape[1])[:, None]  # [k, 1]
    return (g.pi + off).reshape(-1), (g.pj + off).reshape(-1)


def _layers(p: Params, cfg: ModelConfig) -> tuple[list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    layers = [tuple(p[f"interactions.{t}.{name}"] for name in
                    ("in2f.weight", "f2out.0.0.weight", "f2out.0.0.bias", "f2out.1.weight", "f2out.1.bias"))
              for t in range(cfg.n_interactions)]
    head = tuple(p[name] for name in ("output.0.0.weight", "output.0.0.bias", "output.1.weight", "output.1.bias"))
    return layers, head


def embed(p: Params, Z: torch.Tensor) -> torch.Tensor:
    """Atom embeddings of every member [k, n_atoms, A] for atomic numbers Z [kz, n_atoms]."""
    w = p["embedding.weight"]  # [k, max_z, A]
    k, max_z = w.shape[:2]
    idx = Z + (torch.arange(k, device=Z.device) * max_z)[:, None]  # [k, n_atoms] rows of the flattened table
    return torch.nn.functional.embedding(idx, w.reshape(k * max_z, -1))


def energies(p: Params, y: torch.Tensor, g: Graph) -> torch.Tensor:
    """Molecular energies [k, n_mols] float64: ``scale·Σ y + Σ atomref[Z]`` per molecule slot."""
    k, n = y.shape
    atomref = torch.gather(p["offsets.atomref"], 1, g.Z.expand(k, n))  # [k, n_atoms]
    return per_molecule(y.to(torch.float64) * p["offsets.scale"][:, None] + atomref, g.mol, g.n_mols)


def _windowed(p: Params, cfg: ModelConfig, g: Graph, d: torch.Tensor, vec: torch.Tensor, deriv: bool, track: bool,
              compiled: bool):
    """Windowed filters (CPU): pairs sorted by distance per input row, one FilterBank per member.

    A shared input (kz = 1) sorts and plans once for all members; each member's bank then runs
    its T interactions over that plan (per member: its ``[pairs, T·F]`` activations stay in cache,
    which one bank of all k·T blocks would not). Returns (W list, W' list, pi, pj, unit), sorted.
    """
    k, kz, T = p["embedding.weight"].shape[0], d.shape[0], cfg.n_interactions
    names = [f"interactions.{t}.filter_net.{q}"
             for t in range(T) for q in ("0.0.weight", "0.0.bias", "1.weight", "1.bias")]
    P, Fn = d.shape[1], cfg.n_filters
    buf_w = buf_wd = None
    if not track:  # inference: every bank writes straight into [T, k, P, F] (no stacking copies)
        buf_w = d.new_empty(T, k, P, Fn)
        buf_wd = d.new_empty(T, k, P, Fn) if deriv else None
    W_m: list[list[torch.Tensor]] = []  # per member: T filters (tracked path)
    Wd_m: list[list[torch.Tensor]] = []
    pis, pjs, units = [], [], []
    for r in range(kz):
        with torch.no_grad():
            dr, order = torch.sort(d[r])
            pi, pj, vr = g.pi[r][order], g.pj[r][order], vec[r][order]
            fc = fcd = None
            if cfg.cutoff is not None:
                fc, fcd = cosine_cutoff(dr, cfg.cutoff)
            plan = make_plan(dr, cfg, fc, fcd, compiled=compiled)
            unit = vr / dr[:, None]  # [P, 3]
        for m in range(k) if kz == 1 else (r,):
            params = tuple(p[name][m] for name in names)
            if track:
                out = FilterBank.apply(plan, deriv, *params)
                W_m.append(list(out[:T]))
                Wd_m.append(list(out[T:]))
            else:
                dest = ([buf_w[t, m] for t in range(T)], [buf_wd[t, m] for t in range(T)] if buf_wd is not None else [])
                filter_forward(plan, deriv, params, save=False, out=dest)
        pis.append(pi)
        pjs.append(pj)
        units.append(unit)
    stack = lambda ts: ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)  # noqa: E731  (k = 1: a view)
    if buf_w is not None:
        W, Wd = list(buf_w), (list(buf_wd) if buf_wd is not None else [])
    else:
        W = [stack([w[t] for w in W_m]) for t in range(T)]  # T × [k, P, F]
        Wd = [stack([w[t] for w in Wd_m]) for t in range(T)] if deriv else []
    return W, Wd, stack(pis), stack(pjs), stack(units)


def energies_forces(p: Params, cfg: ModelConfig, g: Graph, forces: bool = True, create_graph: bool = False,
                    filters: FilterPath = "dense", forces_by: ForcePath = "explicit", compiled: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Energies [k, n_mols] float64 and forces ``−∂E/∂R`` [k, n_atoms, 3] (or None) of k members.

    Args:
        p: stacked parameters (k members).
        cfg: the members' architecture.
        g: the input, shared (leading axis 1) or per member (leading axis k).
        forces: compute forces.
        create_graph: keep an autograd graph to the parameters through the forces (training on
            forces); with ``forces=False`` the energies keep their graph whenever grad is enabled.
        filters: ``"windowed"`` (CPU) or ``"dense"`` (any device, no host synchronisation).
        forces_by: ``"explicit"`` backward, or ``"autograd"`` through the positions (also taken when
            ``g.R`` requires grad or the pairs are directed).
        compiled: run the compiled CPU kernels (see :mod:`schnet_model.nn.compiled`).
    """
    k = p["embedding.weight"].shape[0]
    dtype = p["embedding.weight"].dtype
    if forces_by == "autograd" or g.R.requires_grad or g.directed:
        return _autograd(p, cfg, g, forces, create_graph)
    track = torch.is_grad_enabled() and (create_graph or not forces)  # a graph to the parameters
    with torch.no_grad():
        R = g.R.to(dtype)
        vec = (torch.gather(R, 1, g.pj[..., None].expand(-1, -1, 3))
               - torch.gather(R, 1, g.pi[..., None].expand(-1, -1, 3)))
        d = torch.linalg.vector_norm(vec, dim=-1)  # [kz, P]
    with torch.set_grad_enabled(track):
        if filters == "windowed":
            W, Wd, pi, pj, unit = _windowed(p, cfg, g, d, vec, forces, track, compiled)
            g = Graph(g.Z, g.R, g.mol, g.n_mols, pi, pj)
        else:
            W, Wd = dense_filters(p, cfg, d, forces)
            unit = vec / d[..., None]
        gi, gj = _flat_pairs(g, k)
        layers, head = _layers(p, cfg)
        x = embed(p, g.Z)  # [k, n_atoms, A]
        y, f = atomwise(compiled, x, W, Wd, gi, gj, unit, layers, head, p["offsets.scale"].to(dtype), forces)
        E = energies(p, y, g)
    if not create_graph and forces:
        E, f = E.detach(), f.detach()
    return E, f


def _autograd(p: Params, cfg: ModelConfig, g: Graph, forces: bool, create_graph: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense filters and forces by autograd through the positions (second derivatives possible).

    A shared input is expanded to one copy per member first, so that ``∂E_m/∂R`` stays per member.
    """
    k = p["embedding.weight"].shape[0]
    dtype = p["embedding.weight"].dtype
    with torch.set_grad_enabled(forces or torch.is_grad_enabled()):
        R = g.R if g.R.requires_grad or not forces else g.R.detach().requires_grad_(True)
        Rk = R.to(dtype)
        if Rk.shape[0] != k:  # shared input: one (differentiable) copy per member
            Rk = Rk.expand(k, -1, -1)
            g = Graph(g.Z.expand(k, -1), Rk, g.mol.expand(k, -1), g.n_mols, g.pi.expand(k, -1), g.pj.expand(k, -1),
                      g.directed)
        vec = (torch.gather(Rk, 1, g.pj[..., None].expand(-1, -1, 3))
               - torch.gather(Rk, 1, g.pi[..., None].expand(-1, -1, 3)))
        d = torch.linalg.vector_norm(vec, dim=-1)  # [k, P]
        W, _ = dense_filters(p, cfg, d, False)
        gi, gj = _flat_pairs(g, k)
        layers, head = _layers(p, cfg)
        x = embed(p, g.Z)
        y, _ = atomwise(False, x, W, [], gi, gj, vec, layers, head, p["offsets.scale"].to(dtype), False, g.directed)
        E = energies(p, y, g)
        if not forces:
            return E, None
        (grad,) = torch.autograd.grad(E.sum(), Rk, create_graph=create_graph)
    return (E if create_graph else E.detach()), -grad
