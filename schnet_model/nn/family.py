"""The model families behind one member-axis interface: what the trainer, the ensemble and the export call.

A family is an architecture config (``model.family``: :class:`~schnet_model.config.ModelConfig` for SchNet,
:class:`~schnet_model.config.PaiNNConfig` for PaiNN), an ``nn.Module`` holding one member's parameters (its state
dict defines the layout), and a functional forward over :data:`~schnet_model.nn.core.Params` with a leading
member axis k on a shared or per-member :class:`~schnet_model.data.graph.Graph`. Everything outside ``nn`` goes
through this module and holds no family-specific code.
"""

from __future__ import annotations

import torch
from torch import nn

from schnet_model.config import AnyConfig, PaiNNConfig
from schnet_model.data.graph import Graph
from schnet_model.nn import core
from schnet_model.nn.core import OFFSET_KEYS, FilterPath, ForcePath, LayoutError, Params
from schnet_model.nn.painn import PaiNN, painn_energies_forces, painn_layout
from schnet_model.nn.radial import rbf_centers
from schnet_model.nn.schnet import SchNet

AnyModel = SchNet | PaiNN
NAMES = {"schnet": "SchNet", "painn": "PaiNN"}  # family → how a user reads it


def build_model(cfg: AnyConfig) -> AnyModel:
    """One member of ``cfg``'s family, freshly initialised (torch's default initialisation, seeded by the caller)."""
    return PaiNN(cfg) if isinstance(cfg, PaiNNConfig) else SchNet(cfg)


def state_layout(cfg: AnyConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of one member's state dict."""
    return painn_layout(cfg) if isinstance(cfg, PaiNNConfig) else core.state_layout(cfg)


def param_keys(cfg: AnyConfig) -> list[str]:
    """The keys of :data:`Params` (the state dict less what is computed from the config)."""
    return [key for key in state_layout(cfg) if key not in _computed(cfg)]


def _computed(cfg: AnyConfig) -> dict[str, torch.Tensor]:
    """State-dict entries that follow from the config (SchNet's Gaussian centres), not learned."""
    return {} if isinstance(cfg, PaiNNConfig) else {"rbf.centers": rbf_centers(cfg.n_rbf, cfg.rbf_spacing)}


def stack_states(states: list[dict[str, torch.Tensor]], cfg: AnyConfig) -> Params:
    """k state dicts (``cfg``'s layout, checked; computed entries equal to the config's) → :data:`Params`
    (detached copies)."""
    layout, name = state_layout(cfg), NAMES[cfg.family]
    computed = _computed(cfg)
    for m, st in enumerate(states):
        missing, extra = sorted(set(layout) - set(st)), sorted(set(st) - set(layout))
        if missing or extra:
            raise LayoutError(f"member {m}: state dict does not match the {name} layout (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
        for key, shape in layout.items():
            if tuple(st[key].shape) != shape:
                raise LayoutError(f"member {m}: {key} has shape {tuple(st[key].shape)}, expected {shape}")
        for key, value in computed.items():
            if not torch.allclose(st[key].to(value), value):
                raise LayoutError(f"member {m}: {key} differs from what the configuration gives")
    return {key: torch.stack([s[key].detach() for s in states]).contiguous() for key in param_keys(cfg)}


def member_state(p: Params, m: int, cfg: AnyConfig) -> dict[str, torch.Tensor]:
    """Member ``m`` of :data:`Params` as a state dict of ``cfg``'s module (copies, on the CPU)."""
    return {**{key: v[m].detach().cpu().clone() for key, v in p.items()}, **_computed(cfg)}


def energies_forces(p: Params, cfg: AnyConfig, g: Graph, forces: bool = True, create_graph: bool = False,
                    filters: FilterPath = "dense", forces_by: ForcePath = "explicit", compiled: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Energies [k, n_mols] float64 and forces ``−∂E/∂R`` [k, n_atoms, 3] (or None) of k members of ``cfg``'s
    family. ``filters``, ``forces_by`` and ``compiled`` choose among SchNet's paths
    (:func:`schnet_model.nn.core.energies_forces`); PaiNN takes ``forces_by`` and ``compiled`` (its filters are
    dense)."""
    if isinstance(cfg, PaiNNConfig):
        return painn_energies_forces(p, cfg, g, forces, create_graph, forces_by=forces_by, compiled=compiled)
    return core.energies_forces(p, cfg, g, forces, create_graph, filters=filters, forces_by=forces_by,
                                compiled=compiled)


def memory_per_item(cfg: AnyConfig) -> tuple[int, int]:
    """Floats held per unordered pair and per atom by one member's evaluation with forces (the ensemble's batching
    estimate): SchNet's filters W, W', ∂E/∂W and messages; PaiNN's filters, messages and vector features, both
    directions of a pair, kept for autograd."""
    T = cfg.n_interactions
    if isinstance(cfg, PaiNNConfig):
        return 30 * T * cfg.n_atom_basis + 16, 24 * T * cfg.n_atom_basis + 16
    return 8 * T * cfg.n_filters + 16, 10 * T * max(cfg.n_filters, cfg.n_atom_basis) + 16


def paths(cfg: AnyConfig, filters: FilterPath, forces_by: ForcePath) -> str:
    """How a forward runs, for logs: SchNet's filter and force paths; PaiNN's force path."""
    if isinstance(cfg, PaiNNConfig):
        return f"PaiNN, forces {forces_by}"
    return f"{filters} filters, forces {forces_by}"


def cost_widths(cfg: AnyConfig) -> tuple[float, float]:
    """What one interaction block's work grows with, per pair and per atom (the budget plan's cost model prices them
    with coefficients measured per family): SchNet (filters F, B·F + B² for atom basis B); PaiNN (F, F²)."""
    if isinstance(cfg, PaiNNConfig):
        return float(cfg.n_atom_basis), float(cfg.n_atom_basis) ** 2
    b, f = cfg.n_atom_basis, cfg.n_filters
    return float(f), float(b * f + b * b)


def size(cfg: AnyConfig) -> str:
    """A configuration's size in a few characters: ``3×64×64`` (SchNet: interactions × filters × atom basis),
    ``PaiNN 3×128`` (interactions × features)."""
    if isinstance(cfg, PaiNNConfig):
        return f"PaiNN {cfg.n_interactions}×{cfg.n_atom_basis}"
    return f"{cfg.n_interactions}×{cfg.n_filters}×{cfg.n_atom_basis}"


def describe(model: nn.Module) -> str:
    """``SchNet: 116,033 parameters, 3 interactions, …`` for logs."""
    cfg = model.config
    n = sum(q.numel() for q in model.parameters() if q.requires_grad)
    cut = "no cutoff" if cfg.cutoff is None else f"cutoff {cfg.cutoff:g} Å"
    return (f"{NAMES[cfg.family]}: {n:,} parameters, {cfg.n_interactions} interactions, {cfg.n_atom_basis} features, "
            f"{cut}")


__all__ = ["NAMES", "OFFSET_KEYS", "AnyConfig", "AnyModel", "build_model", "cost_widths", "describe", "energies_forces",
           "member_state", "memory_per_item", "param_keys", "paths", "size", "stack_states", "state_layout"]
