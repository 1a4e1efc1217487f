"""The SchNet energy + force loss (paper, Section 2.3 of the seed)."""

from __future__ import annotations

import torch

from schnet_model.data.batch import Batch
from schnet_model.nn.schnet import Prediction


def energy_force_loss(pred: Prediction, batch: Batch, rho: float, use_forces: bool) -> torch.Tensor:
    """``mean_m [ ρ·(E_m − Ê_m)² + (1/n_m)·Σ_{i∈m} ‖F_i − F̂_i‖² ]``; energy-only without forces.

    Energies are compared in float64 (totals can be ~10⁵ in magnitude); the result is float64.
    """
    assert batch.E is not None
    e_err = (pred.energy - batch.E) ** 2  # [n_mols] float64
    if not use_forces:
        return e_err.mean()
    assert pred.forces is not None and batch.F is not None
    f_sq = ((pred.forces - batch.F) ** 2).sum(dim=1).to(torch.float64)  # [n_atoms]
    per_mol = torch.zeros_like(e_err).index_add_(0, batch.mol, f_sq) / batch.n_atoms  # [n_mols]
    return (rho * e_err + per_mol).mean()
