"""A dataset of molecules held as compact concatenated arrays, with declared units."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from schnet_model.data.batch import Batch
from schnet_model.data.neighbors import NeighborCache
from schnet_model.units import canonical_energy_unit, force_unit


class DataError(ValueError):
    """Invalid dataset content (shapes, values, units)."""


MAX_ELEMENT = 118  # oganesson: the heaviest element an atomic number can name


def element_names(zs) -> str:
    """``H (Z=1), C (Z=6)`` for error messages."""
    from ase.data import chemical_symbols

    return ", ".join(f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z={z})" for z in map(int, zs))


@dataclass
class Molecules:
    """N molecules, possibly of different sizes, concatenated atom-wise.

    Positions are always in Å (readers convert); energies and forces are in ``energy_unit``
    (forces per Å).
    """

    Z: np.ndarray  # [n_atoms_total] int64
    R: np.ndarray  # [n_atoms_total, 3] float64, Å
    atom_ptr: np.ndarray  # [N + 1] int64 offsets
    E: np.ndarray | None  # [N] float64
    F: np.ndarray | None  # [n_atoms_total, 3] float64
    energy_unit: str
    name: str = "dataset"
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.energy_unit = canonical_energy_unit(self.energy_unit)
        self.Z = np.asarray(self.Z, dtype=np.int64)
        self.R = np.asarray(self.R, dtype=np.float64)
        self.atom_ptr = np.asarray(self.atom_ptr, dtype=np.int64)
        n = len(self.atom_ptr) - 1
        label = self.meta.get("source", self.name)  # errors name the file when there is one
        if n < 1:
            raise DataError(f"{label}: the dataset is empty")
        if self.R.shape != (len(self.Z), 3):
            raise DataError(f"{label}: positions have shape {self.R.shape}, expected ({len(self.Z)}, 3)")
        empty = np.flatnonzero(np.diff(self.atom_ptr) < 1)
        if len(empty):  # frames are numbered from 1 in every message
            raise DataError(f"{label}: frame {empty[0] + 1} has no atoms")
        odd = np.flatnonzero((self.Z < 1) | (self.Z > MAX_ELEMENT))
        if len(odd):
            frame = int(np.searchsorted(self.atom_ptr, odd[0], side="right"))
            raise DataError(f"{label}: frame {frame}: atomic number {self.Z[odd[0]]}; "
                            f"expected an element, 1–{MAX_ELEMENT}")
        if self.E is not None:
            self.E = np.asarray(self.E, dtype=np.float64).reshape(-1)
            if len(self.E) != n:
                raise DataError(f"{label}: {len(self.E)} energies for {n} molecules")
            bad = np.flatnonzero(~np.isfinite(self.E))
            if len(bad):
                raise DataError(f"{label}: frame {bad[0] + 1}: energy is {self.E[bad[0]]}")
        if self.F is not None:
            self.F = np.asarray(self.F, dtype=np.float64)
            if self.F.shape != self.R.shape:
                raise DataError(f"{label}: forces have shape {self.F.shape}, positions {self.R.shape}")
            if not np.isfinite(self.F).all():
                frame = int(np.searchsorted(self.atom_ptr, np.flatnonzero(~np.isfinite(self.F).all(1))[0],
                                            side="right"))
                raise DataError(f"{label}: frame {frame}: forces contain NaN or inf")
        if not np.isfinite(self.R).all():
            raise DataError(f"{label}: positions contain NaN or inf")
        self._cache: dict[float | None, NeighborCache] = {}
        self._torch: dict[str, torch.Tensor] | None = None

    def check_max_z(self, max_z: int) -> None:
        """Raise :class:`DataError` unless every element fits the model's embedding table (Z < ``max_z``)."""
        z = int(self.Z.max())
        if z >= max_z:
            raise DataError(f"{self.meta.get('source', self.name)}: element {element_names([z])} is beyond the model's "
                            f"embedding table (model.max_z = {max_z}: Z < max_z); set model.max_z: {z + 1}")

    # -- basic facts ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.atom_ptr) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per molecule [N]."""
        return np.diff(self.atom_ptr)

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        return [int(z) for z in np.unique(self.Z)]

    @property
    def has_forces(self) -> bool:
        return self.F is not None

    @property
    def force_unit(self) -> str:
        return force_unit(self.energy_unit)

    # -- subsets and batches -------------------------------------------------------------
    def subset(self, idx: np.ndarray) -> Molecules:
        """The molecules ``idx`` (a copy, order kept)."""
        idx = np.asarray(idx, dtype=np.int64)
        atoms = self.atom_index(idx)
        ptr = np.concatenate([[0], np.cumsum(self.n_atoms[idx])])
        return Molecules(
            Z=self.Z[atoms],
            R=self.R[atoms],
            atom_ptr=ptr,
            E=None if self.E is None else self.E[idx],
            F=None if self.F is None else self.F[atoms],
            energy_unit=self.energy_unit,
            name=self.name,
            meta=dict(self.meta),
        )

    @staticmethod
    def concat(parts: list[Molecules], name: str | None = None) -> Molecules:
        """The molecules of ``parts`` one after the other (same energy unit; labels kept only when all have them)."""
        unit = parts[0].energy_unit
        if any(p.energy_unit != unit for p in parts):
            raise DataError(f"cannot join molecules in {sorted({p.energy_unit for p in parts})}: "
                            "convert to one unit first")
        ptr = np.concatenate([[0], np.cumsum(np.concatenate([p.n_atoms for p in parts]))])
        labelled = lambda key: None if any(getattr(p, key) is None for p in parts) else np.concatenate(  # noqa: E731
            [getattr(p, key) for p in parts])
        return Molecules(Z=np.concatenate([p.Z for p in parts]), R=np.concatenate([p.R for p in parts]), atom_ptr=ptr,
                         E=labelled("E"), F=labelled("F"), energy_unit=unit, name=name or parts[0].name,
                         meta=dict(parts[0].meta))

    def atom_index(self, idx: np.ndarray) -> np.ndarray:
        """Concatenated atom indices of molecules ``idx``."""
        starts, counts = self.atom_ptr[idx], self.n_atoms[idx]
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return np.arange(counts.sum()) + offsets

    def neighbors(self, cutoff: float | None) -> NeighborCache:
        """Pair lists for a cutoff (cached: computed once per dataset and cutoff)."""
        if cutoff not in self._cache:
            self._cache[cutoff] = NeighborCache(self.R, self.atom_ptr, cutoff)
        return self._cache[cutoff]

    def _tensors(self) -> dict[str, torch.Tensor]:
        if self._torch is None:
            # zero-copy views of the float64 arrays; batches cast to the model's dtype
            self._torch = {"Z": torch.from_numpy(self.Z), "R": torch.from_numpy(self.R)}
            if self.E is not None:
                self._torch["E"] = torch.from_numpy(self.E)
            if self.F is not None:
                self._torch["F"] = torch.from_numpy(self.F)
        return self._torch

    def batch(self, idx: np.ndarray, cutoff: float | None, dtype: torch.dtype = torch.float32) -> Batch:
        """Collate molecules ``idx`` into a :class:`Batch`; positions and forces in ``dtype``."""
        idx = np.asarray(idx, dtype=np.int64)
        nb = self.neighbors(cutoff)
        counts = self.n_atoms[idx]
        atoms = torch.from_numpy(self.atom_index(idx))
        shift = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pairs = np.concatenate([nb.pairs(m) + s for m, s in zip(idx, shift, strict=True)])
        t = self._tensors()
        pairs_t = torch.from_numpy(pairs)
        return Batch(
            Z=t["Z"][atoms],
            R=t["R"][atoms].to(dtype),
            mol=torch.repeat_interleave(torch.arange(len(idx)), torch.from_numpy(counts)),
            idx_i=pairs_t[:, 0].contiguous(),
            idx_j=pairs_t[:, 1].contiguous(),
            n_atoms=torch.from_numpy(counts),
            E=t["E"][torch.from_numpy(idx)] if "E" in t else None,
            F=t["F"][atoms].to(dtype) if "F" in t else None,
        )

    def describe(self) -> str:
        """One line: count, sizes, elements, units — and, when ``dataset.energy_unit`` overrode the unit the file
        declares, both units (the override is allowed for a file that declares the wrong one; it must be seen)."""
        n = self.n_atoms
        declared = self.meta.get("energy_unit_in_file")
        read_as = self.meta.get("converted_from", self.energy_unit)
        note = (f"; note: the file declares {declared}, read as {read_as} by dataset.energy_unit"
                if declared and declared != read_as else "")
        return (
            f"{self.name}: {len(self)} molecules, {n.min()}–{n.max()} atoms, elements Z={self.elements}, "
            f"energy in {self.energy_unit}, forces {'in ' + self.force_unit if self.has_forces else 'absent'}, "
            f"positions in Å{note}"
        )


def iterate_batches(
    data: Molecules,
    batch_size: int,
    cutoff: float | None,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Yield :class:`Batch` objects covering ``data`` once."""
    order = (rng or np.random.default_rng()).permutation(len(data)) if shuffle else np.arange(len(data))
    for start in range(0, len(order), batch_size):
        yield data.batch(order[start : start + batch_size], cutoff, dtype)
