"""sGDML's plain xyz: per frame the atom count, the energy alone, then ``symbol x y z fx fy fz``.

Energies in kcal/mol and forces in kcal/mol/Å unless the spec says otherwise (the file has no
place to declare units). ASE's xyz reader ignores the energy and forces of this layout, so it is
parsed here: one Python pass over the frame headers, one vectorised parse of all atom lines.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.dataset import Dataset
from schnet_model.data.formats_ase import choose_energy_unit, length_scale
from schnet_model.data.molecules import DataError, Molecules


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def looks_like_sgdml(path: Path) -> bool:
    """Line 2 is a single number and line 3 has 7 columns."""
    with open(path, errors="replace") as f:
        head = [f.readline() for _ in range(3)]
    energy, atom = head[1].split(), head[2].split()
    return len(energy) == 1 and _float(energy[0]) is not None and len(atom) == 7


def read_sgdml_xyz(path: Path, energy_unit: str | None = None, length_unit: str | None = None) -> Molecules:
    """Read an sGDML 7-column xyz file (frames of any sizes).

    Args:
        path: the file.
        energy_unit: the file's energy unit (default kcal/mol).
        length_unit: the file's length unit (default Å).

    Errors name the line (counted from 1).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    L = len(lines)
    starts: list[int] = []  # first atom line (0-based) of each frame
    counts: list[int] = []
    energies: list[float] = []
    i = 0
    while i < L:
        k = len(starts) + 1
        try:
            n = int(lines[i])
        except ValueError as e:
            raise DataError(f"{path}: line {i + 1}: expected the atom count of frame {k}, got {lines[i]!r}") from e
        if n < 1:
            raise DataError(f"{path}: line {i + 1}: frame {k} has {n} atoms")
        if i + 1 >= L:
            raise DataError(f"{path}: line {i + 2}: frame {k}: the file ends before the energy line")
        fields = lines[i + 1].split()
        e = _float(fields[0]) if len(fields) == 1 else None
        if e is None:
            raise DataError(f"{path}: line {i + 2}: frame {k}: expected the energy alone, got {lines[i + 1]!r}")
        if i + 2 + n > L:
            raise DataError(f"{path}: line {L + 1}: frame {k}: the file ends after {L - i - 2} of its {n} atom lines "
                            "(truncated)")
        starts.append(i + 2)
        counts.append(n)
        energies.append(e)
        i += 2 + n
    if not starts:
        raise DataError(f"{path}: no frames")
    n_atoms = sum(counts)
    tokens = "\n".join(chain.from_iterable(lines[s : s + n] for s, n in zip(starts, counts, strict=True))).split()
    cols = None
    if len(tokens) == 7 * n_atoms:
        cols = np.array(tokens).reshape(n_atoms, 7)  # [n_atoms_total, 7] strings
        try:
            vals = cols[:, 1:].astype(np.float64)  # [n_atoms_total, 6]
        except ValueError:
            cols = None
    if cols is None:  # find the offending line
        for s, n in zip(starts, counts, strict=True):
            for j in range(s, s + n):
                f = lines[j].split()
                if len(f) != 7 or any(_float(x) is None for x in f[1:]):
                    raise DataError(f"{path}: line {j + 1}: expected 'symbol x y z fx fy fz', got {lines[j]!r}")
        raise DataError(f"{path}: unparsable atom lines")
    from ase.data import atomic_numbers

    sym, inv = np.unique(cols[:, 0], return_inverse=True)
    unknown = [str(s) for s in sym if s not in atomic_numbers]
    if unknown:
        j = int(np.flatnonzero(cols[:, 0] == unknown[0])[0])
        line = np.repeat(np.array(starts) - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)[j] + j + 1
        raise DataError(f"{path}: line {line}: unknown element {unknown[0]!r}")
    Z = np.array([atomic_numbers[s] for s in sym], np.int64)[inv.reshape(-1)]  # [n_atoms_total]
    e_unit, meta = choose_energy_unit(path, energy_unit, None, "", "kcal/mol")
    s = length_scale(path, length_unit)
    meta.update({"source": str(path), "format": "sgdml_xyz"})
    return Molecules(Z=Z, R=vals[:, :3] * s, atom_ptr=np.concatenate([[0], np.cumsum(counts)]), E=np.array(energies),
                     F=vals[:, 3:] / s, energy_unit=e_unit, name=Path(path).stem, meta=meta)


def sgdml_xyz_dataset(path: Path, cfg: DatasetConfig) -> Dataset:
    return Dataset(read_sgdml_xyz(path, cfg.energy_unit, cfg.length_unit))
