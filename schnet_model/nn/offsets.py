"""Per-element reference energies and scale, inside the model, in float64.

Total energies of molecular datasets are large (MD17 aspirin ≈ −4×10⁵ kcal/mol) while the
network's atom-wise outputs are O(1) float32 numbers. The energy is therefore assembled in
float64 as ``E = scale · Σ_i y_i + Σ_i E_ref[Z_i]`` with ``E_ref`` fitted by least squares
on the training set. The buffers stay float64 even after ``model.float()`` / ``.half()``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class EnergyOffsets(nn.Module):
    """Holds ``atomref`` [max_z] and ``scale`` [] as float64 buffers (applied by :func:`schnet_model.nn.core.energies`).

    Args:
        max_z: size of the reference table (index = atomic number).
    """

    def __init__(self, max_z: int = 100) -> None:
        super().__init__()
        self.register_buffer("atomref", torch.zeros(max_z, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Device moves are fine; dtype casts are not: keep the original float64 values
        # (casting to float32 and back would already have rounded them).
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.dtype != torch.float64:
                self._buffers[name] = before[name].to(device=buf.device)
        return self

    def set(self, atomref: np.ndarray, scale: float) -> None:
        """Copy fitted values in (``atomref`` indexed by atomic number)."""
        ref = torch.zeros_like(self.atomref)
        ref[: len(atomref)] = torch.as_tensor(atomref, dtype=torch.float64)
        self.atomref.copy_(ref)
        self.scale.fill_(float(scale))


def fit_offsets(
    Z: np.ndarray,  # [n_atoms_total] atomic numbers, molecules concatenated
    atom_ptr: np.ndarray,  # [n_mols + 1] offsets of each molecule's atoms
    E: np.ndarray,  # [n_mols] float64 energies
    F: np.ndarray | None,  # [n_atoms_total, 3] forces or None
    max_z: int = 100,
) -> tuple[np.ndarray, float]:
    """Least-squares per-element energies and a scale.

    ``atomref`` minimises ``Σ_m (E_m − Σ_{i∈m} E_ref[Z_i])²`` (minimum-norm solution when the
    compositions do not determine every element, e.g. MD17's single molecule). ``scale`` is the
    RMS force component when forces are given (forces are what the network mostly fits), else
    the standard deviation of the residual energy per atom. Returns (atomref [max_z], scale).
    """
    n_mols = len(atom_ptr) - 1
    mol = np.repeat(np.arange(n_mols), np.diff(atom_ptr))
    elements = np.unique(Z)
    col = np.searchsorted(elements, Z)
    counts = np.zeros((n_mols, len(elements)))
    np.add.at(counts, (mol, col), 1.0)
    E = np.asarray(E, dtype=np.float64)
    sol, *_ = np.linalg.lstsq(counts, E, rcond=None)
    atomref = np.zeros(max_z)
    atomref[elements] = sol
    if F is not None and F.size:
        scale = float(np.sqrt(np.mean(np.square(F, dtype=np.float64))))
    else:
        resid = (E - counts @ sol) / np.diff(atom_ptr)
        scale = float(np.std(resid))
    if not np.isfinite(scale) or scale <= 1e-12:
        scale = 1.0
    return atomref, scale
