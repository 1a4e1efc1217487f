"""Closed-form refit of the per-element energy references on a trained model's training residuals.

With forces weighted far above energies (ρ = 0.01) the network fits forces well while the constant
part of its energies drifts: forces do not see a per-element constant, only the small energy term
pulls it back. Once the weights are final, the least-squares correction ``δ`` of ``atomref`` on
the training residuals ``E_data − E_pred`` removes that drift exactly (forces are unchanged); it
is kept only when it lowers the validation energy MAE. :meth:`Trainer.refit_offsets` and
:meth:`StackedTrainer.refit_offsets` apply it; :func:`plan_refit` is the decision they share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schnet_model.data.molecules import Molecules
from schnet_model.nn.offsets import atomref_correction, reference_energy

ATOMREF = "offsets.atomref"  # the state-dict key of the per-element references (float64 [max_z])


@dataclass(frozen=True)
class OffsetRefit:
    """What refitting the energy references did; energies in ``energy_unit`` (per molecule, or per atom for
    ``correction``)."""

    val_energy_mae_before: float  # validation energy MAE with the trained references
    val_energy_mae_after: float  # … with the refit ones (whether kept or not)
    train_mean_residual: float  # mean of E_data − E_pred on the training set before the refit (> 0: predicted too low)
    val_mean_residual: float  # the same on the validation set, before
    kept: bool  # the refit lowered the validation energy MAE (strictly) and is now in the model
    energy_unit: str
    elements: tuple[int, ...] = ()  # atomic numbers of the training set
    correction: tuple[float, ...] = ()  # δ atomref per element of ``elements`` (added when kept), energy_unit/atom

    def as_dict(self, prefix: str = "offset_refit/") -> dict[str, float]:
        """Flat numbers for a tracker (``kept`` as 0/1)."""
        return {f"{prefix}val_energy_mae_before": self.val_energy_mae_before,
                f"{prefix}val_energy_mae_after": self.val_energy_mae_after,
                f"{prefix}train_mean_residual": self.train_mean_residual,
                f"{prefix}val_mean_residual": self.val_mean_residual,
                f"{prefix}kept": float(self.kept)}

    def format(self) -> str:
        """e.g. ``energy references refit (kept): validation energy MAE 0.46 → 0.11 kcal/mol
        (training mean residual +0.45)``."""
        u = self.energy_unit
        return (f"energy references refit ({'kept' if self.kept else 'not kept'}): validation energy MAE "
                f"{self.val_energy_mae_before:.4g} → {self.val_energy_mae_after:.4g} {u} "
                f"(mean residual E_data − E_pred: training {self.train_mean_residual:+.4g}, validation "
                f"{self.val_mean_residual:+.4g} {u})")


def plan_refit(
    train: Molecules,
    val: Molecules,
    e_train: np.ndarray,  # [n_train] float64 predicted energies of ``train``
    e_val: np.ndarray,  # [n_val] float64 predicted energies of ``val``
    max_z: int,
) -> tuple[np.ndarray, OffsetRefit]:
    """The correction ``δ`` [max_z] float64 of ``atomref`` (zeros unless kept) and what it does.

    ``δ`` is the least-squares fit of the training residuals on element counts (see
    :func:`~schnet_model.nn.offsets.atomref_correction`); the validation energies after it are
    ``e_val + Σ δ[Z]`` exactly (the references are added in float64, forces do not change).
    Non-finite predictions give no correction.
    """
    assert train.E is not None and val.E is not None
    resid = train.E - e_train  # [n_train]
    before = float(np.abs(e_val - val.E).mean())
    val_resid = float((val.E - e_val).mean())
    if not (np.isfinite(resid).all() and np.isfinite(e_val).all()):
        return np.zeros(max_z), OffsetRefit(before, before, float(resid.mean()), val_resid, False, train.energy_unit)
    delta = atomref_correction(train.Z, train.atom_ptr, resid, max_z)  # [max_z]
    after = float(np.abs(e_val + reference_energy(val.Z, val.atom_ptr, delta) - val.E).mean())
    kept = after < before
    elements = tuple(train.elements)
    out = OffsetRefit(before, after, float(resid.mean()), val_resid, kept, train.energy_unit, elements,
                      tuple(float(delta[z]) for z in elements))
    return (delta if kept else np.zeros(max_z)), out


__all__ = ["ATOMREF", "OffsetRefit", "plan_refit"]
