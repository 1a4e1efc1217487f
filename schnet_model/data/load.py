"""From a :class:`DatasetConfig` to a :class:`Dataset`: format dispatch, units, official splits.

Each format has a reader ``read(path, cfg) -> Dataset`` registered in :data:`READERS`. A reader
returns energies in the unit the file declares (or ``cfg.energy_unit`` when given, which wins)
and positions in Å, and records where the unit came from in
``molecules.meta['energy_unit_source']``. :func:`load_dataset` then converts to ``cfg.unit``
when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.checks import check_geometry
from schnet_model.data.molecules import DataError, Molecules
from schnet_model.units import energy_factor


@dataclass
class Dataset:
    """Molecules plus the official split of the source, when it has one."""

    molecules: Molecules
    test: np.ndarray | None = None  # official held-out test indices (ISO17 test db, rMD17 index_test)
    train_pool: np.ndarray | None = None  # official training pool (rMD17 index_train); None = all but test
    path: Path | None = None  # the file or directory read


Reader = Callable[[Path, DatasetConfig], Dataset]
READERS: dict[str, Reader] = {}


def register(fmt: str) -> Callable[[Reader], Reader]:
    """Decorator: register a reader for a format name."""

    def deco(fn: Reader) -> Reader:
        READERS[fmt] = fn
        return fn

    return deco


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` from its name and content."""
    from schnet_model.data import readers

    return readers.detect_format(path)


def resolve_path(cfg: DatasetConfig) -> Path:
    """The local path of the data: ``cfg.path``, or the cached download."""
    if cfg.path is not None:
        return Path(cfg.path)
    from schnet_model.data import download

    return download.fetch_for_config(cfg)


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Read the dataset a config describes, in the unit it asks for."""
    import schnet_model.data.readers  # noqa: F401  (registers the readers)

    path = resolve_path(cfg)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    if fmt not in READERS:
        raise DataError(f"{path}: format {fmt!r} has no reader (known: {sorted(READERS)})")
    ds = READERS[fmt](path, cfg)
    ds.path = path
    mol = ds.molecules
    check_geometry(mol)
    mol.meta.setdefault("format", fmt)
    if cfg.unit is not None and cfg.unit != mol.energy_unit:
        f = energy_factor(mol.energy_unit, cfg.unit)
        mol.meta["converted_from"] = mol.energy_unit
        mol.E = None if mol.E is None else mol.E * f
        mol.F = None if mol.F is None else mol.F * f
        mol.energy_unit = cfg.unit
        mol._torch = None
    return ds


