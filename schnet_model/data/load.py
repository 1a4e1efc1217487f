"""From a :class:`DatasetConfig` to a :class:`Dataset`: format dispatch, units, official splits.

Each format has a reader ``read(path, cfg) -> Dataset`` in the table :data:`READERS`. A reader
returns energies in the unit the file declares (or ``cfg.energy_unit`` when given, which wins)
and positions in Å, and records where the unit came from in
``molecules.meta['energy_unit_source']``. :func:`load_dataset` then converts to ``cfg.unit``
when asked.
"""

from __future__ import annotations

from pathlib import Path

from schnet_model.config import DatasetConfig
from schnet_model.data import formats_ase, iso17, qm9, readers, sgdml_xyz
from schnet_model.data.checks import check_geometry
from schnet_model.data.dataset import Dataset, Reader
from schnet_model.data.molecules import DataError, Molecules
from schnet_model.units import energy_factor

READERS: dict[str, Reader] = {
    "md17": readers.read_md17, "rmd17": readers.read_rmd17, "iso17": iso17.read_iso17, "qm9": qm9.read_qm9,
    "spk_db": formats_ase.spk_db_dataset, "ase": formats_ase.read_ase, "extxyz": formats_ase.read_extxyz,
    "sgdml_xyz": sgdml_xyz.sgdml_xyz_dataset,
}
"""Every format's reader, by the format name ``dataset.format`` takes."""


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` from its name and content."""
    return readers.detect_format(path)


def resolve_path(cfg: DatasetConfig) -> Path:
    """The local path of the data: ``cfg.path``, or the cached download."""
    if cfg.path is not None:
        return Path(cfg.path)
    from schnet_model.data import download

    return download.fetch_for_config(cfg)


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Read the dataset a config describes, in the unit it asks for."""
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




def read_dataset(path: str | Path, fmt: str = "auto", energy_unit: str | None = None, length_unit: str | None = None,
                 **options) -> Molecules:
    """Read any supported dataset file (all of it; official splits are in :func:`load_dataset`)."""
    cfg = DatasetConfig(path=Path(path), format=fmt, energy_unit=energy_unit, length_unit=length_unit, **options)
    return load_dataset(cfg).molecules
