"""Leak-free splits: a held-out test set first, then train/validation or k folds of the rest.

The test set is the source's official one when it has one (ISO17 test db, rMD17
``index_test``), else a seeded random draw. No fold or validation set ever contains a test
index; :class:`SplitManifest` records the indices with the dataset checksum and seed, so a
result can be reproduced and a leak audited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schnet_model.data.molecules import DataError
from schnet_model.files import sha256


@dataclass(frozen=True)
class Split:
    """Disjoint index arrays into a dataset."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "val", "test")}


def holdout(
    n: int,
    n_test: int | None,
    seed: int,
    official_test: np.ndarray | None = None,
    official_pool: np.ndarray | None = None,
    n_needed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test): the test set held out first, the pool everything else.

    Args:
        n: dataset size.
        n_test: test size; None = the official test set, or all molecules not needed for the pool.
        seed: seeds the draw (and the subsample of an official test set when ``n_test`` is set).
        official_test: the source's test indices, if any.
        official_pool: the source's training pool, if any (default: all but the test).
        n_needed: pool size the caller needs (``n_test=None`` without official test takes the rest).
    """
    rng = np.random.default_rng(seed)
    if official_test is not None:
        test = np.asarray(official_test, dtype=np.int64)
        if n_test is not None:
            if n_test > len(test):
                raise DataError(f"n_test={n_test} but the official test set has {len(test)} molecules")
            test = np.sort(rng.choice(test, n_test, replace=False))
        pool = (
            np.asarray(official_pool, dtype=np.int64)
            if official_pool is not None
            else np.setdiff1d(np.arange(n), np.asarray(official_test))
        )
        pool = np.setdiff1d(pool, test)
        return pool, test
    perm = rng.permutation(n)
    if n_test is None:
        n_test = n - n_needed
    if n_test < 0 or n_test + n_needed > n:
        raise DataError(f"split asks for {n_needed + max(n_test, 0)} molecules but the dataset has {n}")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def train_val(pool: np.ndarray, n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train and validation draws from ``pool`` (disjoint)."""
    if n_train + n_val > len(pool):
        raise DataError(
            f"split asks for {n_train + n_val} molecules (n_train={n_train}, n_val={n_val}) "
            f"but only {len(pool)} are available outside the test set"
        )
    perm = np.random.default_rng(seed + 1).permutation(pool)
    return np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val])


def random_split(
    n: int,
    n_train: int,
    n_val: int,
    n_test: int | None,
    seed: int,
    official_test: np.ndarray | None = None,
    official_pool: np.ndarray | None = None,
) -> Split:
    """Test held out first (official when given), then train/validation from the rest."""
    if official_test is None and n_test is not None and n_train + n_val + n_test > n:
        raise DataError(
            f"split asks for {n_train + n_val + n_test} molecules (n_train={n_train}, n_val={n_val}, "
            f"n_test={n_test}) but the dataset has {n}"
        )
    if official_test is None and n_train + n_val > n:
        raise DataError(f"split asks for {n_train + n_val} molecules (n_train={n_train}, n_val={n_val}) "
                        f"but the dataset has {n}")
    pool, test = holdout(n, n_test, seed, official_test, official_pool, n_needed=n_train + n_val)
    if len(pool) == 0:
        raise DataError("the test set leaves no training data")
    train, val = train_val(pool, n_train, n_val, seed)
    return Split(train=train, val=val, test=test)


@dataclass(frozen=True)
class Fold:
    """One cross-validation member's data."""

    train: np.ndarray
    val: np.ndarray


def kfold(pool: np.ndarray, k: int, seed: int) -> list[Fold]:
    """k disjoint validation parts of ``pool`` (seeded shuffle); each fold trains on the other k−1."""
    if k < 2:
        raise DataError(f"k-fold needs k ≥ 2, got {k}")
    if len(pool) < k:
        raise DataError(f"k={k} folds need at least {k} molecules outside the test set, have {len(pool)}")
    parts = np.array_split(np.random.default_rng(seed).permutation(pool), k)
    return [
        Fold(train=np.sort(np.concatenate([p for j, p in enumerate(parts) if j != i])), val=np.sort(parts[i]))
        for i in range(k)
    ]


@dataclass
class HeldOutFile:
    """A separate test file: where it is, its checksum, and its molecules' indices in the joined data."""

    path: str
    sha256: str
    idx: np.ndarray  # [n] indices into the training file's molecules followed by the test files'

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "idx": self.idx.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> HeldOutFile:
        return cls(d["path"], d["sha256"], np.asarray(d["idx"], dtype=np.int64))


@dataclass
class SplitManifest:
    """Indices of every subset, with the dataset's checksum and the seed (JSON on disk)."""

    dataset: str
    dataset_sha256: str
    seed: int
    test: np.ndarray
    train: np.ndarray | None = None
    val: np.ndarray | None = None
    folds: list[Fold] = field(default_factory=list)
    official_test: bool = False
    test_files: dict[str, HeldOutFile] = field(default_factory=dict)

    def test_sets(self) -> dict[str, np.ndarray]:
        """Every test set by name: ``test`` (held out of the dataset; when not empty), then the test files."""
        out = {"test": self.test} if len(self.test) else {}
        return out | {name: f.idx for name, f in self.test_files.items()}

    @classmethod
    def of(cls, joined, seed: int, test: np.ndarray, *, train: np.ndarray | None = None, val: np.ndarray | None = None,
           folds: list[Fold] | None = None) -> SplitManifest:
        """The manifest of a dataset read with its test files (:func:`schnet_model.data.heldout.with_tests`): its
        path and sha256, the indices, whether its test set is the dataset's official one; checked disjoint."""
        loaded = joined.dataset
        manifest = cls(dataset=str(loaded.path), dataset_sha256=sha256(loaded.path), seed=seed, test=test, train=train,
                       val=val, folds=list(folds or []), official_test=loaded.test is not None, test_files=joined.files)
        manifest.check_disjoint()
        return manifest

    def fold_pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each fold's (train, val) indices."""
        return [(f.train, f.val) for f in self.folds]

    def describe_tests(self) -> str:
        """One line: every test set and where it comes from, or that there is none."""
        sets = self.test_sets()
        if not sets:
            return ("no test set: no molecules are held out of the dataset (n_test) and no dataset.test_path is given; "
                    "test errors are not reported and the ensemble's stds cannot be recalibrated")
        where = {name: f"file {Path(f.path).name}" for name, f in self.test_files.items()}
        where["test"] = "official, held out of the dataset" if self.official_test else "held out of the dataset"
        return "test sets: " + ", ".join(f"{name} {len(idx):,} molecules ({where[name]})" for name, idx in sets.items())

    def check_disjoint(self) -> None:
        """Raise DataError if any training/validation index is a test index (or train ∩ val)."""
        test = set(np.concatenate([np.zeros(0, np.int64), *self.test_sets().values()]).tolist())
        sets = [("train", self.train), ("val", self.val)] + [
            (f"fold {i} {name}", getattr(f, name)) for i, f in enumerate(self.folds) for name in ("train", "val")
        ]
        for name, idx in sets:
            if idx is not None and (leak := test & set(idx.tolist())):
                raise DataError(f"split leak: {len(leak)} test molecules in {name}")
        if self.train is not None and self.val is not None and set(self.train.tolist()) & set(self.val.tolist()):
            raise DataError("split leak: train and val overlap")
        for i, f in enumerate(self.folds):
            if set(f.train.tolist()) & set(f.val.tolist()):
                raise DataError(f"split leak: fold {i} train and val overlap")

    def to_json(self) -> str:
        d = {
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "seed": self.seed,
            "official_test": self.official_test,
            "test": self.test.tolist(),
            "train": None if self.train is None else self.train.tolist(),
            "val": None if self.val is None else self.val.tolist(),
            "folds": [{"train": f.train.tolist(), "val": f.val.tolist()} for f in self.folds],
            "test_files": {name: f.to_dict() for name, f in self.test_files.items()},
        }
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> SplitManifest:
        d = json.loads(text)
        arr = lambda v: None if v is None else np.asarray(v, dtype=np.int64)  # noqa: E731
        return cls(
            dataset=d["dataset"], dataset_sha256=d["dataset_sha256"], seed=d["seed"], test=arr(d["test"]),
            train=arr(d["train"]), val=arr(d["val"]), official_test=d.get("official_test", False),
            folds=[Fold(arr(f["train"]), arr(f["val"])) for f in d["folds"]],
            test_files={name: HeldOutFile.from_dict(f) for name, f in d.get("test_files", {}).items()},
        )

    def write(self, path: str | Path) -> None:
        """Write atomically."""
        from schnet_model.files import write_text

        write_text(path, self.to_json())
