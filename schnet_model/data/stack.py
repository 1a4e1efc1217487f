"""One batch per member, k members side by side: the input of stacked (fold-member) training.

Member m's batch holds its own molecules; the k batches are padded to common sizes so that the
core (:func:`schnet_model.nn.core.energies_forces`) runs them as one stacked computation:

- **filler molecules** (weight 0): copies of the member's own molecules. When every molecule of
  every member has the same size (MD17, ISO17), partial and missing batches are filled up to
  ``fill_to`` molecules this way, so every step of an epoch has the same shapes (what a captured
  CUDA graph needs) and nothing unphysical enters the model;
- **ghost atoms** (sizes that differ): extra atoms far from everything, in a ghost molecule slot
  of weight 0, and ghost pairs between two of them at 10 Å, so that all members have the same
  numbers of atoms and pairs.

A weight-0 molecule contributes exactly zero to the loss and to every gradient; pairs are
unordered (i < j), member-local.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from schnet_model.data.graph import Graph, per_molecule
from schnet_model.data.molecules import Molecules
from schnet_model.data.neighbors import block_pairs

GHOST_Z = 1  # element of ghost atoms (any trained row works: their outputs carry weight 0)
GHOST_SPACING = 10.0  # Å between ghost atoms (and from the origin), far from real atoms' pair lists


@dataclass(frozen=True)
class StackedBatch:
    """k member batches padded to common sizes; molecule slot ``n_mols`` − 1 is the ghost slot."""

    Z: torch.Tensor  # [k, n_atoms] int64
    R: torch.Tensor  # [k, n_atoms, 3] Å
    mol: torch.Tensor  # [k, n_atoms] int64 molecule slot
    pi: torch.Tensor  # [k, n_pairs] int64, unordered (i < j)
    pj: torch.Tensor  # [k, n_pairs] int64
    E: torch.Tensor | None  # [k, n_mols] float64 reference energies (0 where padded)
    F: torch.Tensor | None  # [k, n_atoms, 3] reference forces (0 where padded)
    weight: torch.Tensor  # [k, n_mols] float64: 1 for a real molecule, 0 for fillers and ghosts
    atoms_per_mol: torch.Tensor  # [k, n_mols] float64 (≥ 1)

    @property
    def n_mols(self) -> int:
        return int(self.weight.shape[1])

    @property
    def shape_key(self) -> tuple[int, ...]:
        """Sizes that decide whether a captured graph can replay this batch."""
        return (*self.Z.shape, self.pi.shape[1], self.n_mols, self.E is not None, self.F is not None)

    def graph(self) -> Graph:
        return Graph(self.Z, self.R, self.mol, self.n_mols, self.pi, self.pj)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StackedBatch:
        moved = {f.name: (None if getattr(self, f.name) is None
                          else getattr(self, f.name).to(device, non_blocking=non_blocking))
                 for f in fields(self)}
        return replace(self, **moved)

    def pin_memory(self) -> StackedBatch:
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if getattr(self, f.name) is not None})


class StackCollator:
    """Builds :class:`StackedBatch` objects from per-member index arrays.

    Args:
        members: each member's molecules (its own training or validation set).
        cutoff: pair cutoff in Å, or None for all pairs.
        dtype: dtype of positions and forces.
    """

    def __init__(self, members: list[Molecules], cutoff: float | None, dtype: torch.dtype = torch.float32) -> None:
        self.members, self.cutoff, self.dtype = members, cutoff, dtype
        sizes = np.unique(np.concatenate([m.n_atoms for m in members]))
        self.fixed_size = int(sizes[0]) if len(sizes) == 1 else None  # every molecule has this many atoms
        self.has_E = all(m.E is not None for m in members)
        self.has_F = all(m.F is not None for m in members)

    def _pairs(self, m: int, idx: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Unordered pairs of member m's molecules ``idx`` placed at atom offsets ``starts``: [P, 2]."""
        mols = self.members[m]
        if self.cutoff is None:
            return block_pairs(mols.n_atoms[idx])
        nb = mols.neighbors(self.cutoff)
        parts = []
        for i, s in zip(idx, starts, strict=True):
            pr = nb.pairs(int(i))
            parts.append(pr[pr[:, 0] < pr[:, 1]] + s)
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)

    def collate(self, picks: list[np.ndarray], fill_to: int | None = None) -> StackedBatch:
        """One step's batch: member m's molecules ``picks[m]`` (may be empty), real weight 1.

        ``fill_to``: with molecules of one size, fill every member to this many molecules with
        weight-0 copies of its own (static shapes). Otherwise members are padded with ghosts.
        """
        k = len(picks)
        picks = [np.asarray(p, dtype=np.int64) for p in picks]
        n_real = [len(p) for p in picks]
        if fill_to is not None and self.fixed_size is not None:
            target = max(fill_to, *n_real)
            rows = [np.concatenate([p, np.resize(p if len(p) else np.zeros(1, np.int64), target - len(p))])
                    for p in picks]
        else:
            rows = picks
        n_mols = max(len(r) for r in rows) + 1  # + the ghost slot
        per_member = []
        for m, idx in enumerate(rows):
            mols = self.members[m]
            counts = mols.n_atoms[idx]
            starts = (np.cumsum(counts) - counts).astype(np.int64)
            atoms = mols.atom_index(idx)
            per_member.append((idx, counts, starts, atoms, self._pairs(m, idx, starts)))
        n_pairs = max(len(pm[4]) for pm in per_member)
        n_atoms = max(len(pm[3]) + (2 if len(pm[4]) < n_pairs else 0) for pm in per_member)
        Z = np.full((k, n_atoms), GHOST_Z, np.int64)
        R = np.zeros((k, n_atoms, 3))
        mol = np.full((k, n_atoms), n_mols - 1, np.int64)
        pairs = np.zeros((k, n_pairs, 2), np.int64)
        E = np.zeros((k, n_mols)) if self.has_E else None
        F = np.zeros((k, n_atoms, 3)) if self.has_F else None
        weight = np.zeros((k, n_mols))
        apm = np.ones((k, n_mols))
        for m, (idx, counts, _starts, atoms, pr) in enumerate(per_member):
            mols, a, nm = self.members[m], len(atoms), len(idx)
            Z[m, :a], R[m, :a] = mols.Z[atoms], mols.R[atoms]
            mol[m, :a] = np.repeat(np.arange(nm), counts)
            R[m, a:, 0] = GHOST_SPACING * (1 + np.arange(n_atoms - a))  # ghosts on a line, 10 Å apart
            pairs[m, : len(pr)] = pr
            if len(pr) < n_pairs:  # ghost pairs between the first two ghosts
                pairs[m, len(pr):] = (a, a + 1)
            weight[m, : n_real[m]] = 1.0
            apm[m, :nm] = counts
            if E is not None:
                E[m, :nm] = mols.E[idx]
            if F is not None:
                F[m, :a] = mols.F[atoms]
        t = torch.from_numpy
        return StackedBatch(
            Z=t(Z), R=t(R).to(self.dtype), mol=t(mol), pi=t(np.ascontiguousarray(pairs[..., 0])),
            pj=t(np.ascontiguousarray(pairs[..., 1])), E=None if E is None else t(E),
            F=None if F is None else t(F).to(self.dtype), weight=t(weight), atoms_per_mol=t(apm))


def stacked_loss(E: torch.Tensor, F: torch.Tensor | None, b: StackedBatch, rho: float,
                 use_forces: bool) -> torch.Tensor:
    """Per-member loss [k] float64: the weighted mean over real molecules of
    ``ρ·(E − Ê)² + (1/n)·Σ_i ‖F_i − F̂_i‖²`` (energy-only without forces), as
    :func:`~schnet_model.training.loss.energy_force_loss` for each member's own batch."""
    assert b.E is not None
    e_err = (E - b.E) ** 2  # [k, n_mols]
    if use_forces:
        assert F is not None and b.F is not None
        f_sq = ((F - b.F) ** 2).sum(-1).to(torch.float64)  # [k, n_atoms]
        e_err = rho * e_err + per_molecule(f_sq, b.mol, b.n_mols) / b.atoms_per_mol
    return (e_err * b.weight).sum(1) / b.weight.sum(1).clamp_min(1.0)
