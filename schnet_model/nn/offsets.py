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


def element_counts(
    Z: np.ndarray,  # [n_atoms_total] atomic numbers, molecules concatenated
    atom_ptr: np.ndarray,  # [n_mols + 1] offsets of each molecule's atoms
) -> tuple[np.ndarray, np.ndarray]:
    """Atoms of each element per molecule: (counts [n_mols, n_elements] float64, elements [n_elements] sorted)."""
    n_mols = len(atom_ptr) - 1
    mol = np.repeat(np.arange(n_mols), np.diff(atom_ptr))  # [n_atoms_total]
    elements = np.unique(Z)
    col = np.searchsorted(elements, Z)
    counts = np.zeros((n_mols, len(elements)))
    np.add.at(counts, (mol, col), 1.0)
    return counts, elements


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
    counts, elements = element_counts(Z, atom_ptr)  # [n_mols, n_el], [n_el]
    E = np.asarray(E, dtype=np.float64)
    sol, *_ = np.linalg.lstsq(counts, E, rcond=None)  # [n_el]
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


def atomref_correction(
    Z: np.ndarray,  # [n_atoms_total] atomic numbers of the training molecules
    atom_ptr: np.ndarray,  # [n_mols + 1]
    residual: np.ndarray,  # [n_mols] float64, E_data − E_pred (energy unit of the data)
    max_z: int = 100,
) -> np.ndarray:
    """Correction ``δ`` [max_z] float64 to add to ``atomref`` so that the energies fit the data best.

    ``δ`` minimises ``Σ_m (r_m − Σ_{i∈m} δ[Z_i])²`` over the residuals ``r = E_data − E_pred``;
    minimum-norm when the compositions do not determine every element (as :func:`fit_offsets`):
    with one composition (MD17) only ``Σ counts·δ = mean(r)`` is fixed. Elements absent from
    ``Z`` get 0. Forces do not change: ``δ`` is a constant per element.
    """
    counts, elements = element_counts(Z, atom_ptr)  # [n_mols, n_el], [n_el]
    sol, *_ = np.linalg.lstsq(counts, np.asarray(residual, dtype=np.float64), rcond=None)  # [n_el]
    delta = np.zeros(max_z)
    delta[elements] = sol
    return delta


def reference_energy(
    Z: np.ndarray,  # [n_atoms_total]
    atom_ptr: np.ndarray,  # [n_mols + 1]
    atomref: np.ndarray,  # [max_z] float64 per-element energies
) -> np.ndarray:
    """``Σ_{i∈m} atomref[Z_i]`` per molecule [n_mols] float64 (what ``atomref`` adds to each energy)."""
    n_mols = len(atom_ptr) - 1
    mol = np.repeat(np.arange(n_mols), np.diff(atom_ptr))  # [n_atoms_total]
    return np.bincount(mol, weights=np.asarray(atomref, dtype=np.float64)[Z], minlength=n_mols)
