"""A batch of molecules of different sizes, concatenated without padding."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Batch:
    """Molecules concatenated atom-wise.

    Atoms of molecule m occupy a contiguous block; ``mol`` maps each atom to its molecule and
    ``idx_i``/``idx_j`` are neighbour pairs in batch-global atom indices (i receives from j).
    """

    Z: torch.Tensor  # [n_atoms] int64, atomic numbers
    R: torch.Tensor  # [n_atoms, 3] positions in Å
    mol: torch.Tensor  # [n_atoms] int64, molecule index of each atom
    idx_i: torch.Tensor  # [n_pairs] int64
    idx_j: torch.Tensor  # [n_pairs] int64
    n_atoms: torch.Tensor  # [n_mols] int64, atoms per molecule
    E: torch.Tensor | None = None  # [n_mols] float64 reference energies
    F: torch.Tensor | None = None  # [n_atoms, 3] reference forces

    @property
    def n_mols(self) -> int:
        return int(self.n_atoms.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Move to a device; ``dtype`` casts positions and forces (energies stay float64)."""
        moved = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                moved[f.name] = None
                continue
            if dtype is not None and f.name in ("R", "F"):
                t = t.to(dtype)
            moved[f.name] = t.to(device, non_blocking=True)
        return replace(self, **moved)
