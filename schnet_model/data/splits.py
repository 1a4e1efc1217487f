"""Seeded train/validation/test splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schnet_model.data.molecules import DataError


@dataclass(frozen=True)
class Split:
    """Disjoint index arrays into a dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "val", "test")}


def random_split(n: int, n_train: int, n_val: int, n_test: int | None, seed: int) -> Split:
    """Random disjoint split of ``n`` samples; ``n_test=None`` takes all the rest."""
    rest = n - n_train - n_val
    if rest < 0 or (n_test is not None and n_test > rest):
        want = n_train + n_val + (n_test or 0)
        raise DataError(
            f"split asks for {want} molecules (n_train={n_train}, n_val={n_val}, n_test={n_test}) "
            f"but the dataset has {n}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    n_test = rest if n_test is None else n_test
    return Split(
        train=np.sort(perm[:n_train]),
        val=np.sort(perm[n_train : n_train + n_val]),
        test=np.sort(perm[n_train + n_val : n_train + n_val + n_test]),
    )
