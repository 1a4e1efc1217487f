"""ASE-based formats: ASE databases (plain and schnetpack-style), extended XYZ and trajectories.

* ``ase``: any file ``ase.io`` reads (``.traj``, ``.xyz``, ...) or an ASE database (``.db``).
  Energies and forces come from the stored calculator results, ``atoms.info`` /
  key-value pairs / ``row.data`` under ``cfg.energy_key`` and ``cfg.forces_key``; eV and
  eV/Å (ASE's convention) unless the spec or the file declares another unit.
* ``extxyz``: extended XYZ; the comment line may declare ``energy_unit=...`` or ``units=...``.
* ``spk_db``: schnetpack's ASE SQLite layout: per-row ``row.data`` arrays (shape (1,) for
  scalars), units in ``metadata['_property_unit_dict']``, per-element reference energies in
  ``metadata['atomrefs']`` (index = Z).

ASE SQLite databases are read straight from the ``systems`` table with ASE's own decoders
(about ten times faster than ``ase.db`` rows; ISO17's reference db has ~400k rows); other
database back-ends go through ``ase.db.connect(...).select()``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.dataset import Dataset
from schnet_model.data.molecules import DataError, Molecules
from schnet_model.units import UnitError, canonical_energy_unit, canonical_length_unit, length_factor

SQLITE_MAGIC = b"SQLite format 3\x00"
# schnetpack's QM9 property names for DatasetConfig.qm9_target
SPK_QM9_KEYS = {"U0": "energy_U0", "U": "energy_U", "H": "enthalpy_H", "G": "free_energy"}
# exceptions ASE's readers raise on malformed input (XYZError is an OSError)
_ASE_ERRORS = (ValueError, IndexError, KeyError, OSError, AssertionError, RuntimeError, TypeError, AttributeError)


# -- units ---------------------------------------------------------------------------------
def choose_energy_unit(
    path: Path, spec: str | None, file_unit: str | None, file_what: str, default: str
) -> tuple[str, dict[str, str]]:
    """The energy unit to use and the ``meta`` entries recording where it came from.

    Args:
        path: the file (for error messages).
        spec: ``cfg.energy_unit`` (wins when given).
        file_unit: the unit the file declares, or None.
        file_what: where the file declares it, e.g. ``"extxyz energy_unit"``.
        default: the format's default unit.
    """
    try:
        file_canon = None if file_unit is None else canonical_energy_unit(str(file_unit))
        if spec:
            meta = {"energy_unit_source": "spec (dataset.energy_unit)"}
            if file_canon:
                meta["energy_unit_in_file"] = file_canon
            return canonical_energy_unit(spec), meta
        if file_canon:
            return file_canon, {"energy_unit_source": f"file ({file_what})"}
        return canonical_energy_unit(default), {"energy_unit_source": f"format default ({default})"}
    except UnitError as e:
        raise DataError(f"{path}: {e}") from e


def length_scale(path: Path, spec: str | None, file_unit: str | None = None) -> float:
    """Factor from the file's length unit (spec > file > Å) to Å."""
    try:
        return length_factor(canonical_length_unit(spec or file_unit or "Å"), "Å")
    except UnitError as e:
        raise DataError(f"{path}: {e}") from e


def compact_json(values: dict[Any, float]) -> str:
    """A one-line JSON object, e.g. ``{"1":-0.500273,"6":-37.846772}``."""
    return json.dumps({str(k): float(v) for k, v in values.items()}, separators=(",", ":"))


# -- ASE databases ---------------------------------------------------------------------------
class DbRow:
    """One row of an ASE database; key-value pairs and ``data`` are decoded on first use."""

    __slots__ = ("id", "numbers", "positions", "energy", "_forces", "_kvp", "_data", "_path")

    def __init__(self, path: Path, id: int, numbers: np.ndarray, positions: np.ndarray, energy: float | None,
                 forces: Any, kvp: Any, data: Any) -> None:
        self._path = path
        self.id = id  # the row id `ase db` shows (1-based)
        self.numbers = numbers  # [n] int
        self.positions = positions  # [n, 3] float64
        self.energy = energy  # calculator energy column, or None
        self._forces, self._kvp, self._data = forces, kvp, data

    @property
    def forces(self) -> np.ndarray | None:
        """Calculator forces [n, 3], or None."""
        if isinstance(self._forces, bytes | memoryview):
            self._forces = np.frombuffer(self._forces, np.float64).reshape(-1, 3)
        return self._forces

    @property
    def kvp(self) -> dict[str, Any]:
        """Key-value pairs."""
        if isinstance(self._kvp, str):
            try:
                self._kvp = json.loads(self._kvp)
            except ValueError as e:
                raise DataError(f"{self._path}: row {self.id}: unreadable key-value pairs ({e})") from e
        return self._kvp or {}

    @property
    def data(self) -> dict[str, Any]:
        """The row's ``data`` dictionary."""
        if isinstance(self._data, str | bytes):
            from ase.db.core import bytes_to_object
            from ase.io.jsonio import decode

            raw = self._data
            try:
                if isinstance(raw, bytes):
                    self._data = bytes_to_object(raw)
                else:  # JSON text (ASE db version < 9); plain JSON needs none of ASE's object hooks
                    self._data = None if raw == "null" else json.loads(raw) if "__" not in raw else decode(raw)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise DataError(f"{self._path}: row {self.id}: unreadable data ({e})") from e
        return self._data or {}

    def get(self, key: str, calc: str | None = None) -> Any:
        """Property ``key`` from the calculator column ``calc``, the key-value pairs or ``data``."""
        if calc is not None and key == calc:
            v = self.energy if calc == "energy" else self.forces
            if v is not None:
                return v
        if key in self.kvp:
            return self.kvp[key]
        return self.data.get(key)


class AseDb:
    """Read-only access to an ASE database file, fast for SQLite.

    Args:
        path: the ``.db`` (SQLite) or ASE ``.json`` database.
    """

    _COLS = ("id", "numbers", "positions", "energy", "forces", "key_value_pairs", "data")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        with open(self.path, "rb") as f:
            self.sqlite = f.read(16) == SQLITE_MAGIC
        if not self.sqlite and self.path.suffix != ".json":  # never let ase.db initialise a non-database
            raise DataError(f"{self.path}: not an ASE database (expected an SQLite file, or an ASE .json db)")
        if self.sqlite:
            try:
                con = self._connect()
                cols = {r[1] for r in con.execute("PRAGMA table_info(systems)")}
                con.close()
            except sqlite3.DatabaseError as e:
                raise DataError(f"{self.path}: not a readable ASE database ({e})") from e
            if not cols:
                raise DataError(f"{self.path}: not an ASE database (SQLite file without a 'systems' table)")
            # unusual schema (very old ASE): let ase.db handle it
            self.sqlite = set(self._COLS) <= cols

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)

    def _ase(self):
        import ase.db

        try:
            return ase.db.connect(str(self.path), create_indices=False)
        except _ASE_ERRORS as e:
            raise DataError(f"{self.path}: not a readable ASE database ({e})") from e

    @property
    def metadata(self) -> dict[str, Any]:
        """The database's metadata dictionary ({} when none)."""
        try:
            return dict(self._ase().metadata or {})
        except _ASE_ERRORS + (sqlite3.DatabaseError,) as e:
            raise DataError(f"{self.path}: unreadable metadata ({e})") from e

    def counts(self) -> tuple[int, int]:
        """(number of rows, total number of atoms)."""
        if self.sqlite:
            try:
                con = self._connect()
                n, nb = con.execute("SELECT COUNT(*), SUM(LENGTH(numbers)) FROM systems").fetchone()
                con.close()
            except sqlite3.DatabaseError as e:
                raise DataError(f"{self.path}: not a readable ASE database ({e})") from e
            return int(n), int(nb or 0) // 4  # numbers are stored as int32
        n = a = 0
        for row in self.rows():
            n, a = n + 1, a + len(row.numbers)
        return n, a

    def rows(self, limit: int | None = None) -> Iterator[DbRow]:
        """The rows in id order."""
        if not self.sqlite:
            try:
                for r in self._ase().select(limit=limit):
                    yield DbRow(self.path, r.id, r.numbers, r.positions, r.get("energy"), r.get("forces"),
                                r.key_value_pairs, r.data)
            except _ASE_ERRORS as e:
                if isinstance(e, DataError):
                    raise
                raise DataError(f"{self.path}: not a readable ASE database ({e})") from e
            return
        sql = f"SELECT {', '.join(self._COLS)} FROM systems ORDER BY id" + (f" LIMIT {int(limit)}" if limit else "")
        con = self._connect()
        try:
            for id_, nb, pos, energy, forces, kvp, data in con.execute(sql):
                yield DbRow(self.path, id_, np.frombuffer(nb, np.int32),
                            np.frombuffer(pos, np.float64).reshape(-1, 3), energy, forces, kvp, data)
        except (sqlite3.DatabaseError, ValueError) as e:
            raise DataError(f"{self.path}: not a readable ASE database ({e})") from e
        finally:
            con.close()

    def first_row(self) -> DbRow | None:
        """The first row, or None for an empty database."""
        return next(iter(self.rows(limit=1)), None)

    def read(
        self,
        energy: Callable[[DbRow], Any],
        forces: Callable[[DbRow], Any] | None,
        what: str = "energy",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """All rows into preallocated arrays.

        Args:
            energy: row → energy (a number or a size-1 array); None means missing (an error).
            forces: row → forces [n, 3] or None; the first row decides whether forces are read.
            what: the energy property's name, for error messages.

        Returns:
            Z [n_atoms_total] int64, R [n_atoms_total, 3] Å as stored, atom_ptr [N + 1],
            E [N], F [n_atoms_total, 3] or None.
        """
        n_mol, n_atoms = self.counts()
        if n_mol == 0:
            raise DataError(f"{self.path}: the database has no rows")
        Z = np.empty(n_atoms, np.int64)  # [n_atoms_total]
        R = np.empty((n_atoms, 3), np.float64)  # [n_atoms_total, 3]
        ptr = np.zeros(n_mol + 1, np.int64)  # [N + 1]
        E = np.empty(n_mol, np.float64)  # [N]
        F: np.ndarray | None = None  # [n_atoms_total, 3]
        a, i, first_id = 0, -1, None
        for i, row in enumerate(self.rows()):
            n = len(row.numbers)
            if i >= n_mol or a + n > n_atoms:
                raise DataError(f"{self.path}: the database changed while being read")
            if row.positions.shape != (n, 3):
                raise DataError(f"{self.path}: row {row.id}: positions have shape {row.positions.shape}, "
                                f"expected ({n}, 3)")
            Z[a : a + n] = row.numbers
            R[a : a + n] = row.positions
            e = energy(row)
            if e is None:
                raise DataError(f"{self.path}: row {row.id}: no {what}")
            try:
                e = np.asarray(e, dtype=np.float64)
            except (ValueError, TypeError) as err:
                raise DataError(f"{self.path}: row {row.id}: {what} is {e!r}, expected a number") from err
            if e.size != 1:
                raise DataError(f"{self.path}: row {row.id}: {what} has shape {e.shape}, expected a scalar or (1,)")
            E[i] = e.reshape(())
            f = None if forces is None else forces(row)
            if i == 0:
                first_id = row.id
                if f is not None:
                    F = np.empty((n_atoms, 3), np.float64)
            if (F is None) != (f is None):
                state = "no forces" if f is None else "forces"
                raise DataError(f"{self.path}: row {row.id}: {state}, unlike the first row (row {first_id})")
            if F is not None:
                f = np.asarray(f, dtype=np.float64)
                if f.shape != (n, 3):
                    raise DataError(f"{self.path}: row {row.id}: forces have shape {f.shape}, expected ({n}, 3)")
                F[a : a + n] = f
            a += n
            ptr[i + 1] = a
        if i + 1 != n_mol or a != n_atoms:
            raise DataError(f"{self.path}: the database changed while being read")
        return Z, R, ptr, E, F


def db_kind(path: Path) -> str:
    """``'spk_db'``, ``'iso17'`` (ISO17 row layout) or ``'ase'`` for an ASE database file."""
    db = AseDb(path)
    if "_property_unit_dict" in db.metadata:
        return "spk_db"
    row = db.first_row()
    if row is not None and "total_energy" in row.kvp and "atomic_forces" in row.data:
        return "iso17"
    return "ase"


# -- schnetpack databases ----------------------------------------------------------------------
def _split_force_unit(unit: str) -> tuple[str, str]:
    """'kcal/mol/Ang' → ('kcal/mol', 'Ang')."""
    e, _, length = unit.rpartition("/")
    if not e:
        raise UnitError(f"force unit {unit!r} is not of the form energy/length")
    return e, length


def read_spk_db(path: Path, cfg: DatasetConfig) -> Molecules:
    """Read a schnetpack-style ASE database.

    Args:
        path: the ``.db`` file.
        cfg: uses ``energy_key`` (or, for QM9-like dbs, ``qm9_target``), ``forces_key``,
            ``energy_unit``, ``length_unit``.
    """
    from schnet_model.units import energy_factor

    db = AseDb(path)
    md = db.metadata
    units = md.get("_property_unit_dict")
    if not isinstance(units, dict):
        raise DataError(f"{path}: no schnetpack metadata '_property_unit_dict' (format spk_db); use format 'ase'")
    qm9_like = "energy_U0" in units
    default_key = DatasetConfig.model_fields["energy_key"].default
    use_target = qm9_like and cfg.energy_key not in units and cfg.energy_key == default_key
    ekey = SPK_QM9_KEYS[cfg.qm9_target] if use_target else cfg.energy_key
    if ekey not in units:
        raise DataError(f"{path}: no property {ekey!r} (dataset.energy_key); the database has {sorted(units)}")
    fkey = cfg.forces_key if cfg.forces_key in units else None
    e_unit, meta = choose_energy_unit(path, cfg.energy_unit, units[ekey], f"_property_unit_dict[{ekey!r}]", "eV")
    try:
        dist_unit = canonical_length_unit(cfg.length_unit or str(md.get("_distance_unit", "Ang")))
        f_scale = 1.0
        if fkey is not None:
            fe, fl = _split_force_unit(str(units[fkey]))
            f_scale = (1.0 if cfg.energy_unit else energy_factor(fe, e_unit)) / length_factor(cfg.length_unit or fl)
    except UnitError as e:
        raise DataError(f"{path}: {e}") from e

    def _energy(row: DbRow) -> Any:
        return row.get(ekey)

    def _forces(row: DbRow) -> Any:
        return row.get(fkey) if fkey else None

    Z, R, ptr, E, F = db.read(_energy, _forces if fkey else None, what=repr(ekey))
    if fkey is not None and F is None:
        raise DataError(f"{path}: row 1 has no {fkey!r} although _property_unit_dict lists it")
    meta.update({"source": str(path), "format": "spk_db", "energy_key": ekey, "length_unit_in_file": dist_unit})
    if fkey:
        meta["forces_key"] = fkey
        meta["force_unit_in_file"] = str(units[fkey])
    refs = (md.get("atomrefs") or {}).get(ekey)
    if refs is not None:
        meta["atomref"] = compact_json({z: v for z, v in enumerate(np.ravel(refs)) if v != 0.0})
        meta["atomref_unit"] = canonical_energy_unit(str(units[ekey]))
    return Molecules(Z=Z, R=R * length_factor(dist_unit), atom_ptr=ptr, E=E,
                     F=None if F is None else F * f_scale, energy_unit=e_unit, name=path.stem, meta=meta)


def spk_db_dataset(path: Path, cfg: DatasetConfig) -> Dataset:
    return Dataset(read_spk_db(path, cfg))


# -- generic ASE (files ase.io reads, plain ASE databases) ---------------------------------------------
def _read_plain_db(path: Path, cfg: DatasetConfig) -> Molecules:
    """An ASE database without schnetpack metadata: calculator columns, key-value pairs, ``data``."""
    db = AseDb(path)
    md = db.metadata
    file_unit = md.get("energy_unit") or md.get("units")
    e_unit, meta = choose_energy_unit(path, cfg.energy_unit, file_unit, "metadata energy_unit", "eV")

    def _energy(row: DbRow) -> Any:
        return row.get(cfg.energy_key, "energy")

    def _forces(row: DbRow) -> Any:
        return row.get(cfg.forces_key, "forces")

    Z, R, ptr, E, F = db.read(_energy, _forces, what=f"energy (calculator, key-value pair or data {cfg.energy_key!r})")
    s = length_scale(path, cfg.length_unit)
    meta.update({"source": str(path), "format": "ase"})
    return Molecules(Z=Z, R=R * s, atom_ptr=ptr, E=E, F=None if F is None else F / s, energy_unit=e_unit,
                     name=path.stem, meta=meta)


def iter_ase_frames(path: Path, io_fmt: str | None) -> Iterator[tuple[int, Any]]:
    """(1-based frame number, ase.Atoms) for each frame ``ase.io`` reads from ``path``.

    A malformed or truncated frame raises DataError naming the file and the frame.
    """
    import ase.io

    frames = ase.io.iread(str(path), index=":", format=io_fmt)
    k = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except KeyError as e:  # ASE looks chemical symbols up in a table
            raise DataError(f"{path}: frame {k + 1}: unknown element {e.args[0]!r}"
                            if e.args and isinstance(e.args[0], str)
                            else f"{path}: frame {k + 1}: malformed or truncated (KeyError: {e})") from e
        except _ASE_ERRORS as e:
            raise DataError(f"{path}: frame {k + 1}: malformed or truncated ({type(e).__name__}: {e})") from e
        k += 1
        yield k, atoms


def read_frames(path: str | Path) -> list[Any]:
    """Every frame of an ASE-readable file as ``ase.Atoms``; a missing, empty or malformed file raises DataError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frames = [a for _, a in iter_ase_frames(path, "extxyz" if path.suffix in (".xyz", ".extxyz") else None)]
    if not frames:
        raise DataError(f"{path}: no frames")
    return frames


def frame_energy(atoms, key: str = "energy") -> Any:
    """``atoms.info[key]``, else the calculator's result, else None."""
    if key in atoms.info:
        return atoms.info[key]
    calc = atoms.calc
    results = getattr(calc, "results", None) or {}
    return results.get(key)


def frame_forces(atoms, key: str = "forces") -> Any:
    """``atoms.arrays[key]``, else the calculator's result, else None."""
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key)


def read_ase_file(path: Path, cfg: DatasetConfig, fmt: str = "ase") -> Molecules:
    """Read every frame of a file ``ase.io`` understands (extxyz, traj, ...) or an ASE database.

    Args:
        path: the file.
        cfg: uses ``energy_key``, ``forces_key``, ``energy_unit``, ``length_unit``.
        fmt: ``'ase'`` or ``'extxyz'`` (forces ASE's extxyz reader).

    Frames are counted from 1 in error messages.
    """

    if path.suffix in (".db", ".json") and path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(16)
        if path.suffix == ".db" or head == SQLITE_MAGIC:
            return _read_plain_db(path, cfg)
        return _read_plain_db(path, cfg)
    io_fmt = "extxyz" if fmt == "extxyz" or path.suffix in (".xyz", ".extxyz") else None
    Z: list[np.ndarray] = []
    R: list[np.ndarray] = []
    E: list[float] = []
    F: list[np.ndarray] = []
    units: set[str] = set()
    periodic = False
    for k, atoms in iter_ase_frames(path, io_fmt):
        n = len(atoms)
        e = frame_energy(atoms, cfg.energy_key)
        if e is None:
            raise DataError(f"{path}: frame {k}: no energy {cfg.energy_key!r} (looked in the comment/info and "
                            "calculator results; set dataset.energy_key)")
        try:
            e = float(np.asarray(e, dtype=np.float64).reshape(()))
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}: frame {k}: energy {cfg.energy_key!r} is {e!r}, expected a number") from err
        f = frame_forces(atoms, cfg.forces_key)
        if k > 1 and (f is None) != (not F):
            raise DataError(f"{path}: frame {k}: forces {cfg.forces_key!r} are "
                            f"{'missing' if f is None else 'present'}, unlike frame 1")
        if f is not None:
            f = np.asarray(f, dtype=np.float64)
            if f.shape != (n, 3):
                raise DataError(f"{path}: frame {k}: forces have shape {f.shape}, expected ({n}, 3)")
            F.append(f)
        u = atoms.info.get("energy_unit", atoms.info.get("units"))
        if u is not None:
            units.add(str(u))
        periodic = periodic or bool(np.any(atoms.pbc))
        Z.append(atoms.numbers)
        R.append(atoms.positions)
        E.append(e)
    if not Z:
        raise DataError(f"{path}: no frames")
    if len(units) > 1:
        raise DataError(f"{path}: frames declare different energy units {sorted(units)}")
    file_unit = units.pop() if units else None
    e_unit, meta = choose_energy_unit(path, cfg.energy_unit, file_unit, "extxyz energy_unit", "eV")
    s = length_scale(path, cfg.length_unit)
    sizes = np.array([len(z) for z in Z])
    meta.update({"source": str(path), "format": fmt})
    if periodic:
        meta["pbc"] = "ignored: the cell and periodic images are not used"
    return Molecules(
        Z=np.concatenate(Z), R=np.concatenate(R) * s, atom_ptr=np.concatenate([[0], np.cumsum(sizes)]),
        E=np.array(E), F=np.concatenate(F) / s if F else None, energy_unit=e_unit, name=path.stem, meta=meta,
    )


def read_ase(path: Path, cfg: DatasetConfig) -> Dataset:
    return Dataset(read_ase_file(path, cfg, "ase"))


def read_extxyz(path: Path, cfg: DatasetConfig) -> Dataset:
    return Dataset(read_ase_file(path, cfg, "extxyz"))
