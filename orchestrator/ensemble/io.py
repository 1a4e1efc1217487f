"""Files in and out of ``sweep ensemble``: streamed ASE input, atomic extended-XYZ + CSV output.

Input: anything ASE reads (xyz/extxyz, traj, ASE ``.db``), molecules of any sizes mixed, read
frame by frame into chunks of at most ``max_atoms`` atoms (memory stays bounded for millions
of atoms). Positions are Å (ASE's convention). Reference energies/forces, when a frame has
them (``energy``/``forces`` in the extxyz comment and columns, calculator results of a traj or
db row), are in the file's declared ``energy_unit`` (extxyz comment key ``energy_unit`` or
``units``), else ``--input-unit``, else eV (ASE's convention), forces per Å.

Output: extended XYZ, one frame per input molecule, with ``energy``, ``energy_std``,
``forces_std_max``, ``forces_std_mean``, ``energy_unit`` in the comment line and ``forces``,
``forces_std`` (per component), ``forces_std_norm`` per atom; with references also
``energy_ref``, ``energy_error`` (prediction − reference), ``forces_ref``, ``forces_error``.
A CSV next to it has one row per molecule. Both are written to temporary files in the target
directory and renamed into place only when every frame succeeded: an error leaves nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schnet_model.data.checks import MIN_DISTANCE, closest_pairs
from schnet_model.units import UnitError, canonical_energy_unit, energy_factor

# exceptions ASE's readers raise on malformed input (XYZError is an OSError)
OUR_INFO = ("energy", "energy_std", "forces_std_max", "forces_std_mean", "energy_ref", "energy_error", "energy_unit",
            "units", "calibrated", "free_energy")
DEFAULT_CHUNK_ATOMS = 100_000


class InputError(ValueError):
    """Unreadable, truncated or unsuitable input (one line, with the frame number)."""


@dataclass
class FrameChunk:
    """Consecutive input frames; references in ``ref_unit`` (NaN where a frame has none)."""

    first: int  # 1-based number of the chunk's first frame in the file
    Z: np.ndarray  # [n_atoms] int64
    R: np.ndarray  # [n_atoms, 3] Å
    atom_ptr: np.ndarray  # [n + 1]
    ref_energy: np.ndarray  # [n] float64, NaN = none
    ref_forces: np.ndarray  # [n_atoms, 3] float64, NaN rows = none
    cells: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per frame (cell [3,3], pbc [3])
    infos: list[dict[str, Any]] = field(default_factory=list)  # per frame: input comment keys carried over

    def __len__(self) -> int:
        return len(self.atom_ptr) - 1


def _frames(path: Path) -> Iterator[tuple[Any, ...]]:
    """(numbers [n], positions [n, 3], energy|None, forces|None, cell, pbc, info, declared unit|None) per frame."""

    if path.suffix == ".db":
        from schnet_model.data.formats_ase import AseDb
        from schnet_model.data.molecules import DataError

        try:
            db = AseDb(path)
            unit = db.metadata.get("energy_unit") or db.metadata.get("units")
            for row in db.rows():
                yield (row.numbers, row.positions, row.energy, row.forces, np.zeros((3, 3)), np.zeros(3, bool), {},
                       unit)
        except DataError as e:
            raise InputError(str(e)) from e
        return
    from schnet_model.data.formats_ase import frame_energy, frame_forces, iter_ase_frames
    from schnet_model.data.molecules import DataError

    frames = iter_ase_frames(path, "extxyz" if path.suffix in (".xyz", ".extxyz") else None)
    while True:
        try:
            _, atoms = next(frames)
        except StopIteration:
            return
        except DataError as e:
            raise InputError(str(e)) from e
        info = {key: v for key, v in atoms.info.items()
                if key not in OUR_INFO and isinstance(v, str | int | float | bool)}
        unit = atoms.info.get("energy_unit", atoms.info.get("units"))
        yield (atoms.numbers, atoms.positions, frame_energy(atoms), frame_forces(atoms), np.array(atoms.cell),
               np.array(atoms.pbc), info, unit)


def read_chunks(path: str | Path, max_atoms: int = DEFAULT_CHUNK_ATOMS, input_unit: str | None = None
                ) -> tuple[str, Iterator[FrameChunk]]:
    """(unit of the references, iterator of chunks). The unit comes from the first frame's declaration,
    ``input_unit``, or eV; a frame declaring another unit is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    frames = _frames(path)
    try:
        first = next(frames)
    except StopIteration:
        raise InputError(f"{path}: no frames") from None
    try:
        declared = None if first[7] is None else canonical_energy_unit(str(first[7]))
        unit = declared or (canonical_energy_unit(input_unit) if input_unit else "eV")
    except UnitError as e:
        raise InputError(f"{path}: frame 1: {e}") from e

    def gen() -> Iterator[FrameChunk]:
        buf: list[tuple[Any, ...]] = []
        n_atoms, start, k = 0, 1, 0
        for fr in _chain(first, frames):
            k += 1
            numbers, pos = np.asarray(fr[0], dtype=np.int64), np.asarray(fr[1], dtype=np.float64)
            if len(numbers) == 0:
                raise InputError(f"{path}: frame {k}: no atoms")
            if pos.shape != (len(numbers), 3) or not np.isfinite(pos).all():
                raise InputError(f"{path}: frame {k}: positions are malformed (shape {pos.shape} or non-finite values)")
            d, i, j = closest_pairs(pos, np.array([0, len(numbers)]))
            if d[0] < MIN_DISTANCE:
                raise InputError(f"{path}: frame {k}: atoms {i[0] + 1} and {j[0] + 1} are {d[0]:.3g} Å apart, "
                                 f"closer than {MIN_DISTANCE:g} Å: not a physical geometry")
            if fr[7] is not None and declared is not None and canonical_energy_unit(str(fr[7])) != declared:
                raise InputError(f"{path}: frame {k}: energy_unit {fr[7]!r} differs from frame 1's {declared!r}")
            buf.append((numbers, pos, *fr[2:7]))
            n_atoms += len(numbers)
            if n_atoms >= max_atoms:
                yield _to_chunk(path, start, buf)
                start, buf, n_atoms = k + 1, [], 0
        if buf:
            yield _to_chunk(path, start, buf)

    return unit, gen()


def _chain(first: tuple[Any, ...], rest: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    yield first
    yield from rest


def _to_chunk(path: Path, start: int, buf: list[tuple[Any, ...]]) -> FrameChunk:
    sizes = np.array([len(b[0]) for b in buf])
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    E = np.full(len(buf), np.nan)
    Fr = np.full((int(ptr[-1]), 3), np.nan)
    for i, (numbers, _, e, f, *_rest) in enumerate(buf):
        if e is not None:
            try:
                E[i] = float(np.asarray(e, dtype=np.float64).reshape(()))
            except (ValueError, TypeError) as err:
                raise InputError(f"{path}: frame {start + i}: energy {e!r} is not a number") from err
        if f is not None:
            f = np.asarray(f, dtype=np.float64)
            if f.shape != (len(numbers), 3):
                raise InputError(f"{path}: frame {start + i}: forces have shape {f.shape}, "
                                 f"expected ({len(numbers)}, 3)")
            Fr[ptr[i] : ptr[i + 1]] = f
    return FrameChunk(first=start, Z=np.concatenate([b[0] for b in buf]), R=np.concatenate([b[1] for b in buf]),
                      atom_ptr=ptr, ref_energy=E, ref_forces=Fr, cells=[(b[4], b[5]) for b in buf],
                      infos=[b[6] for b in buf])


def csv_path(out: Path) -> Path:
    """The per-molecule CSV summary next to the extxyz output: ``preds.extxyz`` → ``preds.csv``."""
    return out.with_suffix(".csv") if out.suffix != ".csv" else out.with_name(out.name + ".summary.csv")


class Writer:
    """Extended XYZ frames and CSV rows for predicted chunks (values already in ``unit``)."""

    def __init__(self, xyz, csv_fh, unit: str, calibrated: bool, has_ref: bool) -> None:
        self.xyz, self.unit, self.calibrated, self.has_ref = xyz, unit, calibrated, has_ref
        self.csv = csv.writer(csv_fh)
        fu = f"{unit}/Å"
        head = ["frame", "n_atoms", "formula", f"energy [{unit}]", f"energy_std [{unit}]", f"forces_std_max [{fu}]",
                f"forces_std_mean [{fu}]"]
        if has_ref:
            head += [f"energy_ref [{unit}]", f"energy_error [{unit}]", f"forces_mae [{fu}]", f"forces_rmse [{fu}]"]
        self.csv.writerow(head)

    def write(self, chunk: FrameChunk, pred, ref_e: np.ndarray | None, ref_f: np.ndarray | None) -> None:
        """``pred``: :class:`~schnet_model.ensemble.EnsemblePrediction` in the output unit; refs converted likewise."""
        import ase.io
        from ase import Atoms

        ptr = chunk.atom_ptr
        frames = []
        rows = []
        for i in range(len(chunk)):
            a0, a1 = ptr[i], ptr[i + 1]
            cell, pbc = chunk.cells[i]
            at = Atoms(numbers=chunk.Z[a0:a1], positions=chunk.R[a0:a1], cell=cell, pbc=pbc)
            at.info.update(chunk.infos[i])
            at.info.update(energy=float(pred.energy[i]), energy_std=float(pred.energy_std[i]),
                           forces_std_max=float(pred.forces_std_max[i]), forces_std_mean=float(pred.forces_std_mean[i]),
                           energy_unit=self.unit, calibrated=bool(self.calibrated))
            at.arrays["forces"] = pred.forces[a0:a1]
            at.arrays["forces_std"] = pred.forces_std[a0:a1]
            at.arrays["forces_std_norm"] = pred.forces_std_norm[a0:a1]
            row = [chunk.first + i, a1 - a0, at.get_chemical_formula(), f"{pred.energy[i]:.10g}",
                   f"{pred.energy_std[i]:.6g}", f"{pred.forces_std_max[i]:.6g}", f"{pred.forces_std_mean[i]:.6g}"]
            if self.has_ref:
                e_ref = ref_e[i] if ref_e is not None else np.nan
                if np.isfinite(e_ref):
                    at.info.update(energy_ref=float(e_ref), energy_error=float(pred.energy[i] - e_ref))
                fr = ref_f[a0:a1] if ref_f is not None else None
                ferr = None
                if fr is not None and np.isfinite(fr).all():
                    ferr = pred.forces[a0:a1] - fr
                    at.arrays["forces_ref"] = fr
                    at.arrays["forces_error"] = ferr
                row += [f"{e_ref:.10g}" if np.isfinite(e_ref) else "",
                        f"{pred.energy[i] - e_ref:.6g}" if np.isfinite(e_ref) else "",
                        f"{np.abs(ferr).mean():.6g}" if ferr is not None else "",
                        f"{np.sqrt(np.square(ferr).mean()):.6g}" if ferr is not None else ""]
            frames.append(at)
            rows.append(row)
        ase.io.write(self.xyz, frames, format="extxyz")
        self.csv.writerows(rows)


def convert_refs(chunk: FrameChunk, ref_unit: str, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference energies [n] and forces [n_atoms, 3] of a chunk in ``unit`` (NaN where absent)."""
    f = energy_factor(ref_unit, unit)
    return chunk.ref_energy * f, chunk.ref_forces * f


__all__ = ["FrameChunk", "InputError", "Writer", "convert_refs", "csv_path", "read_chunks"]
