"""Neighbour pairs of molecules, computed once per dataset and cached.

Without a cutoff (the paper's default) every ordered pair i ≠ j of a molecule interacts; the
pair list depends only on the atom count, so one template per size is cached. With a cutoff,
vesin computes each molecule's list once (positions are fixed per sample).
"""

from __future__ import annotations

import numpy as np


def all_pairs(n: int) -> np.ndarray:
    """All ordered pairs (i, j), i ≠ j, of n atoms: [n·(n−1), 2] int64."""
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    return np.stack([i, j], axis=1).astype(np.int64)


def cutoff_pairs(R: np.ndarray, cutoff: float) -> np.ndarray:
    """Ordered pairs closer than ``cutoff`` (Å) in a non-periodic molecule: [n_pairs, 2] int64."""
    import vesin

    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j = nl.compute(points=np.ascontiguousarray(R, dtype=np.float64), box=np.zeros((3, 3)), periodic=False, quantities="ij")
    order = np.lexsort((j, i))
    return np.stack([i[order], j[order]], axis=1).astype(np.int64)


class NeighborCache:
    """Per-molecule pair lists for a dataset, built once.

    Args:
        R: [n_atoms_total, 3] positions (Å), molecules concatenated.
        atom_ptr: [n_mols + 1] atom offsets.
        cutoff: radius in Å, or None for all pairs.
    """

    def __init__(self, R: np.ndarray, atom_ptr: np.ndarray, cutoff: float | None) -> None:
        self.cutoff = cutoff
        counts = np.diff(atom_ptr)
        if cutoff is None:
            self._templates = {int(n): all_pairs(int(n)) for n in np.unique(counts)}
            self.pair_counts = counts * (counts - 1)
            self._pairs = None
            self._pair_ptr = None
        else:
            lists = [cutoff_pairs(R[a:b], cutoff) for a, b in zip(atom_ptr[:-1], atom_ptr[1:], strict=True)]
            self.pair_counts = np.array([len(p) for p in lists], dtype=np.int64)
            self._pair_ptr = np.concatenate([[0], np.cumsum(self.pair_counts)])
            self._pairs = np.concatenate(lists) if lists else np.zeros((0, 2), np.int64)
        self._counts = counts

    def pairs(self, m: int) -> np.ndarray:
        """Local pair indices of molecule m: [n_pairs_m, 2]."""
        if self._pairs is None:
            return self._templates[int(self._counts[m])]
        return self._pairs[self._pair_ptr[m] : self._pair_ptr[m + 1]]
