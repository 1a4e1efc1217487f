"""QM9 (Ramakrishnan et al. 2014): the official ``dsgdb9nsd.xyz.tar.bz2`` and schnetpack's QM9 db.

Each ``dsgdb9nsd_NNNNNN.xyz`` member: line 1 the atom count; line 2 ``gdb <id>`` and 15
properties A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv (energies in Hartree); one line per
atom ``symbol x y z mulliken_charge`` (Å); then frequencies, SMILES and InChI. Numbers may use
Mathematica's ``*^`` exponent marker (``1.2*^-5``).

Energies are the target ``cfg.qm9_target`` in Ha, not atom-referenced; the official
isolated-atom energies are in :data:`QM9_ATOMREF_HA` and in ``meta['atomref']``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.dataset import Dataset
from schnet_model.data.formats_ase import choose_energy_unit, compact_json, length_scale, read_spk_db
from schnet_model.data.molecules import DataError, Molecules

# Column of each target among the 15 properties on line 2.
QM9_PROPERTIES = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
# Official atomref.txt: B3LYP/6-31G(2df,p) isolated-atom energies in Ha, by target and Z.
QM9_ATOMREF_HA: dict[str, dict[int, float]] = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}
N_UNCHARACTERIZED = 3054
_SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def _parse_xyz(text: str, where: str) -> tuple[int, list[str], list[list[str]], list[str]]:
    """One QM9 xyz → (gdb id, property strings [15], atom rows [n][4], symbols [n]).

    Args:
        text: the member's text with ``*^`` already replaced by ``e``.
        where: ``"tarball:member"`` for error messages.
    """
    lines = text.splitlines()
    try:
        n = int(lines[0])
    except (IndexError, ValueError) as e:
        raise DataError(f"{where}: line 1: expected the atom count, got {lines[0] if lines else ''!r}") from e
    head = lines[1].split() if len(lines) > 1 else []
    if len(head) < 17 or head[0] != "gdb":
        raise DataError(f"{where}: line 2: expected 'gdb <id>' and 15 properties, got {len(head)} fields")
    if len(lines) < 2 + n:
        raise DataError(f"{where}: line {len(lines) + 1}: the file ends before its {n} atom lines")
    rows = [ln.split() for ln in lines[2 : 2 + n]]
    for k, r in enumerate(rows):
        if len(r) < 4:
            raise DataError(f"{where}: line {k + 3}: expected 'symbol x y z charge', got {lines[2 + k]!r}")
    try:
        mol_id = int(head[1])
    except ValueError as e:
        raise DataError(f"{where}: line 2: bad molecule id {head[1]!r}") from e
    return mol_id, head[2:17], [r[1:4] for r in rows], [r[0] for r in rows]


def read_uncharacterized(path: Path) -> set[int]:
    """The 1-based QM9 indices listed in the official ``uncharacterized.txt``.

    Header, separator and footer lines (any line whose first field is not an integer) are skipped.
    """
    ids = set()
    for line in path.read_text(errors="replace").splitlines():
        f = line.split()
        if f and f[0].isdigit():
            ids.add(int(f[0]))
    if not ids:
        raise DataError(f"{path}: no molecule indices found (expected lines starting with the QM9 index)")
    return ids


def _members(path: Path):
    """(name, text) of each QM9 xyz in a tarball or a directory, ``*^`` replaced by ``e``."""
    if path.is_dir():
        for p in sorted(path.glob("dsgdb9nsd_*.xyz")):
            yield str(p), p.read_text().replace("*^", "e")
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".xyz"):
                    fh = tar.extractfile(m)
                    if fh is None:
                        continue
                    yield f"{path}:{m.name}", fh.read().decode("utf-8", errors="replace").replace("*^", "e")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable QM9 tarball ({e})") from e


def read_qm9_xyz(path: Path, cfg: DatasetConfig) -> Molecules:
    """Read the official QM9 tarball (or a directory of its extracted xyz files).

    Args:
        path: ``dsgdb9nsd.xyz.tar.bz2``, a directory holding it, or a directory of ``dsgdb9nsd_*.xyz``; an
            ``uncharacterized.txt`` next to it is used when ``cfg.qm9_exclude_uncharacterized``.
        cfg: uses ``qm9_target``, ``qm9_exclude_uncharacterized``, ``energy_unit``, ``length_unit``.
    """
    if path.is_dir() and not any(path.glob("dsgdb9nsd_*.xyz")) and (path / "dsgdb9nsd.xyz.tar.bz2").is_file():
        path = path / "dsgdb9nsd.xyz.tar.bz2"  # the download cache's qm9/ directory
    if path.is_file() and not tarfile.is_tarfile(path):
        raise DataError(f"{path}: not a tar archive "
                        "(expected QM9's dsgdb9nsd.xyz.tar.bz2 or a directory of its xyz files)")
    base = path if path.is_dir() else path.parent
    unchar_file = base / "uncharacterized.txt"
    exclude: set[int] = set()
    if cfg.qm9_exclude_uncharacterized:
        if not unchar_file.is_file():
            raise DataError(
                f"{path}: qm9_exclude_uncharacterized is set but {unchar_file} is missing: put QM9's official "
                "uncharacterized.txt (3,054 molecules) there, or set dataset.qm9_exclude_uncharacterized: false"
            )
        exclude = read_uncharacterized(unchar_file)
    col = QM9_PROPERTIES.index(cfg.qm9_target)
    ids: list[int] = []
    energies: list[str] = []
    sizes: list[int] = []
    coords: list[list[str]] = []  # [n_atoms_total][3] strings, parsed at once
    symbols: list[str] = []
    n_skipped = 0
    for where, text in _members(path):
        mol_id, props, xyz, sym = _parse_xyz(text, where)
        if mol_id in exclude:
            n_skipped += 1
            continue
        ids.append(mol_id)
        energies.append(props[col])
        sizes.append(len(sym))
        coords.extend(xyz)
        symbols.extend(sym)
    if not ids:
        raise DataError(f"{path}: no QM9 molecules (expected dsgdb9nsd_*.xyz files)")
    try:
        E = np.array(energies, dtype=np.float64)  # [N]
        R = np.array(coords, dtype=np.float64)  # [n_atoms_total, 3]
    except ValueError as e:
        raise DataError(f"{path}: unparsable number ({e})") from e
    try:
        Z = np.array([_SYMBOLS[s] for s in symbols], dtype=np.int64)  # [n_atoms_total]
    except KeyError as e:
        raise DataError(f"{path}: unknown element {e.args[0]!r} (QM9 has H, C, N, O, F)") from e
    ptr = np.concatenate([[0], np.cumsum(sizes)])  # [N + 1]
    order = np.argsort(np.array(ids), kind="stable")
    if not (order == np.arange(len(ids))).all():  # tar members out of id order: sort molecules by id
        counts = np.array(sizes)[order]
        starts = ptr[:-1][order]
        atoms = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        Z, R, E = Z[atoms], R[atoms], E[order]
        ptr = np.concatenate([[0], np.cumsum(counts)])
        ids = [ids[i] for i in order]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate QM9 molecule ids")
    e_unit, meta = choose_energy_unit(path, cfg.energy_unit, None, "", "Ha")
    meta.update({
        "source": str(path), "format": "qm9", "qm9_target": cfg.qm9_target,
        "atomref": compact_json(QM9_ATOMREF_HA[cfg.qm9_target]), "atomref_unit": "Ha",
        "qm9_ids": f"{ids[0]}..{ids[-1]}",
        "uncharacterized_excluded": str(n_skipped) if cfg.qm9_exclude_uncharacterized else "no",
    })
    return Molecules(Z=Z, R=R * length_scale(path, cfg.length_unit), atom_ptr=ptr, E=E, F=None,
                     energy_unit=e_unit, name="qm9", meta=meta)


def read_qm9(path: Path, cfg: DatasetConfig) -> Dataset:
    """QM9 tarball / xyz directory, or a schnetpack QM9 db (``.db``)."""
    if path.suffix == ".db":
        return Dataset(read_spk_db(path, cfg))
    return Dataset(read_qm9_xyz(path, cfg))
