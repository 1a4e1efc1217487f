"""Unordered pairs from a symmetric neighbour list."""

from __future__ import annotations

import torch


def unordered_pairs(idx_i: torch.Tensor, idx_j: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(i, j, 2)`` with each unordered pair once (i < j) when the list holds every pair in both
    directions exactly once (all pairs, or a cutoff list), else ``(idx_i, idx_j, 1)``.

    Filters depend on the distance only, so a symmetric list needs them for half the pairs.
    The check is exact (sorted keys of both halves compared), not assumed.
    """
    lower = idx_i < idx_j
    n = int(lower.sum())
    if 2 * n == idx_i.numel() and n > 0:
        i, j = idx_i[lower], idx_j[lower]
        upper = ~lower
        key_lo = i * n_atoms + j
        key_up = idx_j[upper] * n_atoms + idx_i[upper]
        if not bool((key_lo[1:] > key_lo[:-1]).all()):
            key_lo = torch.sort(key_lo).values
        if torch.equal(key_lo, torch.sort(key_up).values) and bool((key_lo[1:] > key_lo[:-1]).all()):
            return i, j, 2
    return idx_i, idx_j, 1
