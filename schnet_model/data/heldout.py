"""Test sets kept apart from the training data: separate files, read in their own units, joined after it.

A sweep or a training run sees one :class:`Molecules`: the training file's molecules first, then
every test file's, converted to the training file's energy unit. Test sets are index arrays into
it, by name: ``test`` for the set held out of the training file (``n_test``, or the source's
official test set), and the names of ``dataset.test_path`` for the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.dataset import Dataset
from schnet_model.data.load import load_dataset
from schnet_model.data.molecules import DataError, Molecules, element_names
from schnet_model.data.splits import HeldOutFile
from schnet_model.files import sha256


@dataclass
class WithTests:
    """The training file as read, and the molecules of it and every test file joined."""

    dataset: Dataset
    molecules: Molecules
    files: dict[str, HeldOutFile] = field(default_factory=dict)


def read_heldout_file(cfg: DatasetConfig, name: str, path: Path, train: Molecules) -> Molecules:
    """Read test file ``name`` in its declared unit, convert it to the training data's, check it can be predicted."""
    sub = DatasetConfig(path=path, format=cfg.test_format, energy_unit=cfg.test_energy_unit,
                        length_unit=cfg.test_length_unit, unit=train.energy_unit, energy_key=cfg.energy_key,
                        forces_key=cfg.forces_key)
    try:
        mol = load_dataset(sub).molecules
    except DataError as e:  # the reader names the file; say which key of the spec it came from
        raise DataError(f"dataset.test_path {name!r}: {e}") from None
    where = f"dataset.test_path {name!r} ({path})"
    unseen = sorted(set(mol.elements) - set(train.elements))
    if unseen:
        raise DataError(f"{where}: elements {element_names(unseen)} are not in the training data "
                        f"({element_names(train.elements)}); no model can predict them")
    if mol.E is None:
        raise DataError(f"{where}: no reference energies to test against")
    if train.F is not None and mol.F is None:
        raise DataError(f"{where}: no reference forces, but the training data has them")
    return mol


def with_tests(cfg: DatasetConfig) -> WithTests:
    """Read the training file and the test files of ``cfg``; the joined molecules and where each test file sits."""
    ds = load_dataset(cfg)
    parts, files, start = [ds.molecules], {}, len(ds.molecules)
    for name, path in cfg.test_files().items():
        mol = read_heldout_file(cfg, name, path, ds.molecules)
        parts.append(mol)
        files[name] = HeldOutFile(str(path), sha256(path), np.arange(start, start + len(mol), dtype=np.int64))
        start += len(mol)
    joined = ds.molecules if len(parts) == 1 else Molecules.concat(parts)
    return WithTests(ds, joined, files)


def n_held_out(cfg: DatasetConfig, ds: Dataset) -> int | None:
    """``n_test`` for the split of the training file: none held out when test files are given (unless asked)."""
    if cfg.n_test is None and cfg.test_path is not None and ds.test is None:
        return 0
    return cfg.n_test


__all__ = ["HeldOutFile", "WithTests", "n_held_out", "read_heldout_file", "with_tests"]
