"""Readers: file → :class:`Molecules` with declared units.

Formats here: MD17/sGDML npz and rMD17 npz (both kcal/mol and Å unless the file or the spec
says otherwise). ISO17, QM9 and the ASE formats live in :mod:`~schnet_model.data.iso17`,
:mod:`~schnet_model.data.qm9`, :mod:`~schnet_model.data.formats_ase` and
:mod:`~schnet_model.data.sgdml_xyz`; :mod:`~schnet_model.data.load` holds the table of all readers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data import formats_ase, iso17, sgdml_xyz
from schnet_model.data.dataset import Dataset
from schnet_model.data.molecules import DataError, Molecules
from schnet_model.units import UnitError, canonical_energy_unit, canonical_length_unit, length_factor

MD17_KEYS = ("R", "z", "E")
RMD17_KEYS = ("nuclear_charges", "coords", "energies")


def _scalar(npz, key: str) -> str | None:
    if key not in npz.files:
        return None
    v = npz[key]
    v = v.item() if v.shape == () else v.ravel()[0] if v.size else None
    return v.decode() if isinstance(v, bytes) else None if v is None else str(v)


KNOWN_FORMATS = (
    "md17 / rmd17 (.npz), iso17 (directory with reference.db, or an ISO17 .db), "
    "qm9 (dsgdb9nsd.xyz.tar.bz2), spk_db / ase (.db), extxyz / sgdml_xyz (.xyz, .extxyz), ase (.traj)"
)


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name and content.

    Args:
        path: a file, or a directory (ISO17 archive, extracted QM9 xyz files).
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        if iso17.iso17_dir(path) is not None:
            return "iso17"
        if any(path.glob("dsgdb9nsd*")):
            return "qm9"
        raise DataError(f"{path}: cannot detect the format of this directory (expected ISO17's reference.db or "
                        f"QM9's dsgdb9nsd files); known formats: {KNOWN_FORMATS}")
    if path.suffix == ".npz":
        return _detect_npz(path)
    if name in iso17.ISO17_DBS:
        return "iso17"
    if name.endswith(".tar.bz2") or "dsgdb9nsd" in name:
        return "qm9"
    if path.suffix == ".db":
        return formats_ase.db_kind(path)
    if path.suffix == ".xyz":
        return "sgdml_xyz" if sgdml_xyz.looks_like_sgdml(path) else "extxyz"
    if path.suffix == ".extxyz":
        return "extxyz"
    if path.suffix == ".traj":
        return "ase"
    raise DataError(f"{path}: cannot detect the format from the name; known formats: {KNOWN_FORMATS} "
                    "(or set dataset.format)")


def _detect_npz(path: Path) -> str:
    with _open_npz(path) as npz:
        keys = set(npz.files)
    if set(MD17_KEYS) <= keys:
        return "md17"
    if set(RMD17_KEYS) <= keys:
        return "rmd17"
    raise DataError(
        f"{path}: unknown npz layout with keys {sorted(keys)}; expected MD17 keys {list(MD17_KEYS)} "
        f"or rMD17 keys {list(RMD17_KEYS)}"
    )


def _open_npz(path: Path):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_file() and not zipfile.is_zipfile(path):  # numpy would try it as a pickle and advise allow_pickle
        raise DataError(f"{path}: not a readable npz file (an npz is a zip archive of .npy arrays; this file is not a "
                        "complete zip archive: truncated, or another kind of file)")
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable npz file ({e})") from e


def read_npz(
    path: str | Path,
    fmt: str = "auto",
    energy_unit: str | None = None,
    length_unit: str | None = None,
) -> Molecules:
    """Read an MD17/sGDML or rMD17 npz.

    Args:
        path: the file.
        fmt: ``'md17'``, ``'rmd17'`` or ``'auto'`` (from the keys).
        energy_unit: override the file's unit (default: the file's ``e_unit`` or kcal/mol).
        length_unit: override the file's unit (default: the file's ``r_unit`` or Å).
    """
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    keys = {"md17": ("R", "z", "E", "F"), "rmd17": ("coords", "nuclear_charges", "energies", "forces")}[fmt]
    with _open_npz(path) as npz:
        for k in keys[:3]:
            if k not in npz.files:
                raise DataError(f"{path}: missing key {k!r} for format {fmt} (has {sorted(npz.files)})")
        try:
            R = np.asarray(npz[keys[0]], dtype=np.float64)
            z = np.asarray(npz[keys[1]], dtype=np.int64)
            E = np.asarray(npz[keys[2]], dtype=np.float64)
            F = np.asarray(npz[keys[3]], dtype=np.float64) if keys[3] in npz.files else None
        except ValueError as e:
            raise DataError(f"{path}: {e}") from e
        file_unit = _scalar(npz, "e_unit")
        unit_source = ("spec (dataset.energy_unit)" if energy_unit else "file (e_unit)" if file_unit
                       else "format default (kcal/mol)")
        try:
            e_unit = canonical_energy_unit(energy_unit or file_unit or "kcal/mol")
            r_unit = canonical_length_unit(length_unit or _scalar(npz, "r_unit") or "Å")
        except UnitError as e:
            raise DataError(f"{path}: {e}") from e
        meta = {k: s for k in ("name", "theory", "md5") if (s := _scalar(npz, k)) is not None}
    if R.ndim != 3 or R.shape[2] != 3:
        raise DataError(f"{path}: {keys[0]!r} has shape {R.shape}, expected (N, n_atoms, 3)")
    N, n = R.shape[:2]
    if z.shape != (n,):
        raise DataError(f"{path}: {keys[1]!r} has shape {z.shape}, expected ({n},) to match {keys[0]!r}")
    if E.shape not in ((N,), (N, 1)):
        raise DataError(f"{path}: {keys[2]!r} has shape {E.shape}, expected ({N},) or ({N}, 1)")
    if F is not None and F.shape != R.shape:
        raise DataError(f"{path}: {keys[3]!r} has shape {F.shape}, expected {R.shape} like {keys[0]!r}")
    scale_r = length_factor(r_unit, "Å")
    return Molecules(
        Z=np.tile(z, N),
        R=R.reshape(-1, 3) * scale_r,
        atom_ptr=np.arange(N + 1) * n,
        E=E.reshape(-1),
        F=None if F is None else F.reshape(-1, 3) / scale_r,
        energy_unit=e_unit,
        name=meta.get("name", path.stem),
        meta={"format": fmt, "source": str(path), "length_unit_in_file": r_unit, "energy_unit_source": unit_source,
              **({"energy_unit_in_file": canonical_energy_unit(file_unit)} if file_unit and energy_unit else {}),
              **meta},
    )


def read_md17(path: Path, cfg: DatasetConfig) -> Dataset:
    return Dataset(read_npz(path, "md17", cfg.energy_unit, cfg.length_unit))


def read_rmd17(path: Path, cfg: DatasetConfig) -> Dataset:
    mol = read_npz(path, "rmd17", cfg.energy_unit, cfg.length_unit)
    if cfg.rmd17_split is None:
        return Dataset(mol)
    train = read_index_csv(_split_file(path, f"index_train_0{cfg.rmd17_split}.csv"), len(mol))
    test = read_index_csv(_split_file(path, f"index_test_0{cfg.rmd17_split}.csv"), len(mol))
    if np.intersect1d(train, test).size:
        raise DataError(f"{path}: official split {cfg.rmd17_split}: train and test indices overlap")
    return Dataset(mol, test=test, train_pool=train)


def _split_file(npz: Path, name: str) -> Path:
    """rMD17 archive layout: rmd17/npz_data/rmd17_X.npz with rmd17/splits/index_*.csv."""
    for d in (npz.parent.parent / "splits", npz.parent / "splits", npz.parent):
        if (d / name).is_file():
            return d / name
    raise DataError(f"{npz}: official split file {name} not found in {npz.parent.parent / 'splits'} "
                    "(rMD17 archive layout)")


def read_index_csv(path: Path, n: int) -> np.ndarray:
    """Integer indices, one per line or comma-separated; checked against the dataset size ``n``."""
    tokens = path.read_text().replace(",", " ").split()
    try:
        idx = np.array([int(float(t)) for t in tokens], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{path}: expected integer indices ({e})") from None
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise DataError(f"{path}: indices must lie in 0..{n - 1} "
                        f"(found {idx.min() if idx.size else 'none'}..{idx.max() if idx.size else ''})")
    return np.unique(idx)
