"""Neighbour pairs of molecules, computed once per dataset and cached.

Without a cutoff (the paper's default) every ordered pair i ≠ j of a molecule interacts; the
pair list depends only on the atom count, so one template per size is cached. With a cutoff,
vesin computes each molecule's list once (positions are fixed per sample).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def all_pairs(n: int) -> np.ndarray:
    """All ordered pairs (i, j), i ≠ j, of n atoms: [n·(n−1), 2] int64."""
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    return np.stack([i, j], axis=1).astype(np.int64)


@lru_cache(maxsize=256)
def pair_template(n: int, unordered: bool) -> np.ndarray:
    """All pairs of n atoms: each once (i < j, [n(n−1)/2, 2]) when ``unordered``, else both directions."""
    if unordered:
        return np.stack(np.triu_indices(n, 1), axis=1).astype(np.int64)  # [n(n-1)/2, 2], i < j
    return all_pairs(n)


def block_pairs(counts: np.ndarray, unordered: bool = True) -> np.ndarray:
    """All pairs of a block of molecules (sizes ``counts``), batch-global: [n_pairs, 2].

    ``unordered``: each pair once (i < j); else both directions (as :meth:`Molecules.batch`).
    Grouped by molecule in molecule order; vectorised per distinct size (no Python work per molecule).
    """
    if not len(counts):
        return np.zeros((0, 2), np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [n_mols]
    sizes = np.unique(counts)
    parts, owners = [], []
    for n in sizes:
        sel = np.flatnonzero(counts == n)
        t = pair_template(int(n), unordered)  # [n_pairs_n, 2]
        parts.append((t[None] + starts[sel][:, None, None]).reshape(-1, 2))
        owners.append(np.repeat(sel, len(t)))
    if len(sizes) == 1:
        return parts[0]
    order = np.argsort(np.concatenate(owners), kind="stable")
    return np.concatenate(parts)[order]


def cutoff_pairs(R: np.ndarray, cutoff: float) -> np.ndarray:
    """Ordered pairs closer than ``cutoff`` (Å) in a non-periodic molecule: [n_pairs, 2] int64."""
    import vesin

    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j = nl.compute(points=np.ascontiguousarray(R, dtype=np.float64), box=np.zeros((3, 3)), periodic=False,
                      quantities="ij")
    order = np.lexsort((j, i))
    return np.stack([i[order], j[order]], axis=1).astype(np.int64)


def cutoff_pairs_many(R: np.ndarray, atom_ptr: np.ndarray, cutoff: float,
                      chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Cutoff pairs of many molecules with few vesin calls.

    Molecules are placed on a grid with a spacing larger than their extent plus the cutoff, so
    one neighbour search over a chunk finds exactly the intra-molecular pairs.

    Returns:
        pairs: [n_pairs, 2] local (per-molecule) atom indices, grouped by molecule, sorted by (i, j).
        counts: [n_mols] pairs per molecule.
    """
    import vesin

    n_mols = len(atom_ptr) - 1
    counts = np.diff(atom_ptr)
    mol_of_atom = np.repeat(np.arange(n_mols), counts)  # [n_atoms]
    # centre each molecule, then measure the largest radius
    centre = np.add.reduceat(R, atom_ptr[:-1], axis=0) / counts[:, None]  # [n_mols, 3]
    local = R - centre[mol_of_atom]
    radius = float(np.sqrt((local**2).sum(axis=1)).max()) if len(R) else 0.0
    spacing = 2.0 * radius + cutoff + 1.0
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    out_pairs, out_counts = [], []
    for start in range(0, n_mols, chunk):
        stop = min(start + chunk, n_mols)
        a0, a1 = atom_ptr[start], atom_ptr[stop]
        m = mol_of_atom[a0:a1] - start  # [n_chunk_atoms]
        side = int(np.ceil((stop - start) ** (1 / 3)))
        grid = np.stack(np.unravel_index(m, (side, side, side)), axis=1) * spacing  # [n_chunk_atoms, 3]
        pts = local[a0:a1] + grid
        i, j = nl.compute(points=pts, box=np.zeros((3, 3)), periodic=False, quantities="ij")
        i, j = i.astype(np.int64), j.astype(np.int64)
        order = np.lexsort((j, i))
        i, j = i[order], j[order]
        pm = m[i]  # molecule of each pair (sorted by i, so grouped by molecule)
        first = atom_ptr[start:stop][pm] - a0  # first atom of the pair's molecule, chunk-local
        out_pairs.append(np.stack([i - first, j - first], axis=1))
        out_counts.append(np.bincount(pm, minlength=stop - start))
    if not out_pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_pairs), np.concatenate(out_counts)


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
            self._pairs, self.pair_counts = cutoff_pairs_many(R, atom_ptr, cutoff)
            self._pair_ptr = np.concatenate([[0], np.cumsum(self.pair_counts)])
        self._counts = counts

    def pairs(self, m: int) -> np.ndarray:
        """Local pair indices of molecule m: [n_pairs_m, 2]."""
        if self._pairs is None:
            return self._templates[int(self._counts[m])]
        return self._pairs[self._pair_ptr[m] : self._pair_ptr[m + 1]]
