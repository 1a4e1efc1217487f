"""Geometry that cannot be right: atoms of one molecule closer than a physical bound."""

from __future__ import annotations

import numpy as np

from schnet_model.data.molecules import DataError, Molecules

MIN_DISTANCE = 0.1  # Å; the shortest bond (H2) is 0.74 Å, nuclei this close are a broken frame


def closest_pairs(R: np.ndarray, atom_ptr: np.ndarray,
                  chunk_atoms: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per molecule: the shortest interatomic distance and its atoms (local indices).

    Returns (d [N], i [N], j [N]); molecules with one atom get d = inf. Vectorised per molecule size.
    """
    counts = np.diff(atom_ptr)
    n = len(counts)
    d_out, i_out, j_out = np.full(n, np.inf), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for a in np.unique(counts):
        if a < 2:
            continue
        mols = np.flatnonzero(counts == a)
        iu, ju = np.triu_indices(int(a), 1)
        step = max(1, chunk_atoms // int(a * a))
        for s in range(0, len(mols), step):
            sel = mols[s : s + step]
            pos = R[atom_ptr[sel][:, None] + np.arange(a)]  # [m, a, 3]
            dist = np.linalg.norm(pos[:, iu] - pos[:, ju], axis=-1)  # [m, a(a−1)/2]
            k = dist.argmin(axis=1)
            d_out[sel], i_out[sel], j_out[sel] = dist[np.arange(len(sel)), k], iu[k], ju[k]
    return d_out, i_out, j_out


def check_geometry(mols: Molecules, min_distance: float = MIN_DISTANCE) -> None:
    """Raise :class:`DataError` naming the file, the frame (1-based) and the atoms of the first molecule
    whose atoms are closer than ``min_distance`` Å."""
    d, i, j = closest_pairs(mols.R, mols.atom_ptr)
    bad = np.flatnonzero(d < min_distance)
    if len(bad):
        m = int(bad[0])
        label = mols.meta.get("source", mols.name)
        more = f" ({len(bad) - 1} more such frames)" if len(bad) > 1 else ""
        raise DataError(f"{label}: frame {m + 1}: atoms {i[m] + 1} and {j[m] + 1} are {d[m]:.3g} Å apart, closer than "
                        f"{min_distance:g} Å: not a physical geometry{more}")
