"""Evaluation: energy and force errors in the dataset's units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from schnet_model.data.molecules import Molecules, iterate_batches
from schnet_model.nn.schnet import SchNet
from schnet_model.training.errors import NonFinitePrediction
from schnet_model.training.loss import energy_force_loss


@dataclass(frozen=True)
class Metrics:
    """Errors of a model on a dataset; energies in ``energy_unit``, forces per Å."""

    n: int
    loss: float
    energy_mae: float
    energy_rmse: float
    forces_mae: float | None  # component-wise
    forces_rmse: float | None  # component-wise
    energy_unit: str

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss, f"{prefix}energy_mae": self.energy_mae,
               f"{prefix}energy_rmse": self.energy_rmse}
        if self.forces_mae is not None:
            out[f"{prefix}forces_mae"] = self.forces_mae
            out[f"{prefix}forces_rmse"] = float(self.forces_rmse)  # type: ignore[arg-type]
        return out

    def format(self) -> str:
        """e.g. ``energy MAE 0.123 kcal/mol (RMSE 0.2), forces MAE 0.9 kcal/mol/Å (RMSE 1.3)``."""
        s = f"energy MAE {self.energy_mae:.4g} {self.energy_unit} (RMSE {self.energy_rmse:.4g})"
        if self.forces_mae is not None:
            s += f", forces MAE {self.forces_mae:.4g} {self.energy_unit}/Å (RMSE {self.forces_rmse:.4g})"
        return s


@dataclass(frozen=True)
class Predictions:
    """Model outputs for a whole dataset, in dataset order."""

    energy: np.ndarray  # [N] float64
    forces: np.ndarray | None  # [n_atoms_total, 3]


def predict(
    model: SchNet, data: Molecules, batch_size: int = 128, forces: bool = True, device: str | torch.device = "cpu"
) -> Predictions:
    """Energies (and forces) of every molecule in ``data``."""
    model.eval()
    dtype = next(model.parameters()).dtype
    energies, force_list = [], []
    for batch in iterate_batches(data, batch_size, model.config.cutoff, dtype=dtype):
        pred = model(batch.to(device), forces=forces)
        energies.append(pred.energy.detach().cpu().numpy())
        if forces:
            force_list.append(pred.forces.detach().cpu().numpy().astype(np.float64))  # type: ignore[union-attr]
    return Predictions(np.concatenate(energies), np.concatenate(force_list) if forces else None)


def evaluate(
    model: SchNet,
    data: Molecules,
    rho: float = 0.01,
    use_forces: bool | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> Metrics:
    """Loss and MAE/RMSE of energies and force components on ``data``."""
    use_forces = data.has_forces if use_forces is None else use_forces and data.has_forces
    return metrics_of(predict(model, data, batch_size, forces=use_forces, device=device), data, rho, use_forces)


def mae_rmse(err: np.ndarray) -> tuple[float, float]:
    """Mean absolute and root-mean-square of errors (any shape: force components count one by one)."""
    return float(np.abs(err).mean()), float(np.sqrt(np.square(err).mean()))


def metrics_of(p: Predictions, data: Molecules, rho: float, use_forces: bool) -> Metrics:
    """Loss and MAE/RMSE of predictions ``p`` of ``data`` (the one place errors are computed).

    Raises :class:`NonFinitePrediction` naming the first molecule predicted NaN/inf.
    """
    assert data.E is not None
    bad = ~np.isfinite(p.energy)
    if p.forces is not None:
        bad |= ~np.logical_and.reduceat(np.isfinite(p.forces).all(1), data.atom_ptr[:-1])
    if bad.any():
        m = int(np.flatnonzero(bad)[0])
        raise NonFinitePrediction(f"{data.meta.get('source', data.name)}: the model predicts NaN/inf for molecule {m} "
                                  f"({int(bad.sum())} of {len(bad)}); no metric computed")
    e_err = p.energy - data.E
    n = data.n_atoms
    if use_forces:
        f_err = p.forces - data.F  # type: ignore[operator]
        per_atom = np.square(f_err).sum(axis=1)
        per_mol = np.add.reduceat(per_atom, data.atom_ptr[:-1]) / n
        loss = float(np.mean(rho * e_err**2 + per_mol))
        f_mae, f_rmse = mae_rmse(f_err)
    else:
        loss, f_mae, f_rmse = float(np.mean(e_err**2)), None, None
    e_mae, e_rmse = mae_rmse(e_err)
    return Metrics(
        n=len(data),
        loss=loss,
        energy_mae=e_mae,
        energy_rmse=e_rmse,
        forces_mae=f_mae,
        forces_rmse=f_rmse,
        energy_unit=data.energy_unit,
    )


__all__ = ["Metrics", "Predictions", "energy_force_loss", "evaluate", "metrics_of", "predict"]
