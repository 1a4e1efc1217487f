"""ISO17 (Schütt et al. 2017): C7H10O2 isomer MD trajectories in ASE SQLite databases.

The archive holds ``reference.db`` (training pool, ~400k molecules), ``reference_eq.db``,
``test_within.db`` (known molecules, other steps), ``test_other.db`` (unknown molecules) and
``test_eq.db``. Each row: key-value pair ``total_energy`` (eV) and ``data['atomic_forces']``
(eV/Å).

Given the directory (or its ``reference.db``), the reader returns reference.db's rows
followed by the rows of the test db ``cfg.iso17_test``, with the official test indices.
Any other single db in this layout is read alone, without a split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.dataset import Dataset
from schnet_model.data.formats_ase import AseDb, DbRow, choose_energy_unit, length_scale
from schnet_model.data.molecules import DataError, Molecules

ISO17_DBS = ("reference.db", "reference_eq.db", "test_within.db", "test_other.db", "test_eq.db")
ENERGY_KEY = "total_energy"  # key-value pair, eV
FORCES_KEY = "atomic_forces"  # row.data, eV/Å


def iso17_dir(path: Path) -> Path | None:
    """The ISO17 directory (holding reference.db) at ``path`` or in ``path/iso17``, else None."""
    for d in (path, path / "iso17"):
        if (d / "reference.db").is_file():
            return d
    return None


def _energy(row: DbRow) -> Any:
    kvp = row.kvp
    if ENERGY_KEY not in kvp:
        raise DataError(f"{row._path}: row {row.id}: no key-value pair {ENERGY_KEY!r} (ISO17 layout: "
                        f"{ENERGY_KEY} and data[{FORCES_KEY!r}]; has {sorted(kvp)})")
    return kvp[ENERGY_KEY]


def _forces(row: DbRow) -> Any:
    data = row.data
    if FORCES_KEY not in data:
        raise DataError(f"{row._path}: row {row.id}: no data[{FORCES_KEY!r}] (ISO17 layout; has {sorted(data)})")
    return data[FORCES_KEY]


def read_iso17_db(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One ISO17-layout db → Z [A], R [A, 3] (Å), atom_ptr [N + 1], E [N] (eV), F [A, 3] (eV/Å).

    Args:
        path: the ``.db`` file.
    """
    Z, R, ptr, E, F = AseDb(path).read(_energy, _forces, what=ENERGY_KEY)
    assert F is not None  # _forces never returns None
    return Z, R, ptr, E, F


def read_iso17(path: Path, cfg: DatasetConfig) -> Dataset:
    """Read ISO17: reference.db + the chosen test db, or one ISO17-layout db alone.

    Args:
        path: the ISO17 directory, its ``reference.db``, or any db in the ISO17 row layout.
        cfg: uses ``iso17_test``, ``energy_unit``, ``length_unit``.
    """
    path = Path(path)
    if path.is_dir():
        d = iso17_dir(path)
        if d is None:
            raise DataError(f"{path}: not an ISO17 directory: expected {path / 'reference.db'} "
                            f"(and {cfg.iso17_test}.db)")
        files = [d / "reference.db", d / f"{cfg.iso17_test}.db"]
    elif path.name == "reference.db":
        files = [path, path.parent / f"{cfg.iso17_test}.db"]
    else:
        files = [path]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: no such file: ISO17 needs {files[0].name} and {cfg.iso17_test}.db "
                            f"(dataset.iso17_test) in {f.parent}")
    parts = [read_iso17_db(f) for f in files]
    sizes = [len(p[3]) for p in parts]
    Z = np.concatenate([p[0] for p in parts])  # [n_atoms_total]
    R = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]  # [n_atoms_total, 3]
    F = np.concatenate([p[4] for p in parts]) if len(parts) > 1 else parts[0][4]  # [n_atoms_total, 3]
    E = np.concatenate([p[3] for p in parts])  # [N]
    offsets = np.cumsum([0] + [len(p[0]) for p in parts])
    ptr = np.concatenate([parts[0][2]] + [p[2][1:] + o for p, o in zip(parts[1:], offsets[1:-1], strict=True)])  # [N+1]
    e_unit, meta = choose_energy_unit(files[0], cfg.energy_unit, None, "", "eV")
    s = length_scale(files[0], cfg.length_unit)
    if s != 1.0:
        R, F = R * s, F / s
    meta.update({"source": str(path), "format": "iso17"})
    if len(files) > 1:
        meta.update({"iso17_test": cfg.iso17_test, "n_reference": str(sizes[0]), f"n_{cfg.iso17_test}": str(sizes[1])})
    else:
        meta["iso17_test"] = "none (single db: no official split)"
    mol = Molecules(Z=Z, R=R, atom_ptr=ptr, E=E, F=F, energy_unit=e_unit,
                    name="iso17" if len(files) > 1 else path.stem, meta=meta)
    if len(files) == 1:
        return Dataset(mol)
    return Dataset(mol, test=np.arange(sizes[0], sizes[0] + sizes[1]), train_pool=np.arange(sizes[0]))

