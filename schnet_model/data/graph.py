"""Molecules as the core reads them, for k members: :class:`Graph`, and sums over each member's molecules.

A data structure, not a computation of the model: the stacked batches (:mod:`schnet_model.data.stack`) build
it, the core (:mod:`schnet_model.nn.core`) reads it, so it lives below both (data never imports nn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Graph:
    """Molecules for k members: one input shared by all (leading axis 1) or one per member (axis k).

    Atoms of a member are numbered 0..n_atoms−1; pairs are unordered (i < j, each once: the filter
    serves both directions) unless ``directed`` (i ← j only, forces by autograd).
    """

    Z: torch.Tensor  # [kz, n_atoms] int64
    R: torch.Tensor  # [kz, n_atoms, 3] Å
    mol: torch.Tensor  # [kz, n_atoms] int64 molecule slot of each atom, < n_mols
    n_mols: int  # molecule slots per member
    pi: torch.Tensor  # [kz, n_pairs] int64
    pj: torch.Tensor  # [kz, n_pairs] int64
    directed: bool = False


def per_molecule(values: torch.Tensor, mol: torch.Tensor, n_mols: int) -> torch.Tensor:
    """Sums of per-atom ``values`` [k, n_atoms] over each member's molecule slots ``mol`` [kz, n_atoms]: [k, n_mols]."""
    k = values.shape[0]
    slot = (mol + (torch.arange(k, device=values.device) * n_mols)[:, None]).reshape(-1)  # [k·n_atoms]
    out = torch.zeros(k * n_mols, dtype=values.dtype, device=values.device).index_add_(0, slot, values.reshape(-1))
    return out.view(k, n_mols)


__all__ = ["Graph", "per_molecule"]
