"""The ensemble as an i-PI force provider (a driver for ``i-pi-py_driver``), committee included.

i-PI works in atomic units (Bohr, Hartree); the driver converts with i-PI's own unit tables (as
i-PI's ASE driver does), through eV and Å. Each call returns the ensemble mean energy and forces,
and in the JSON ``extras`` every member's energy and forces (``committee_pot``,
``committee_force``, ``committee_virial``: what i-PI's ``<ffcommittee>`` reads with
``<parse_json>true</parse_json>``) plus ``energy_std`` (Ha) and ``forces_std_max`` (Ha/Bohr), stds
calibrated unless ``calibrated=false``. Give ``<ffcommittee>`` ``<alpha>`` = the ensemble's energy
scale (``sweep ensemble`` prints it) so that i-PI's ``committee_uncertainty`` is the calibrated std.

Run (the molecule's elements and order come from ``template``; a periodic template is refused)::

    i-pi-py_driver -m custom -P $(python -m schnet_model.engines.ipi) \\
        -o template=mol.xyz,ensemble=ens_dir -a 127.0.0.1 -p 31415
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ipi.pes.dummy import Dummy_driver
from ipi.utils.units import unit_to_internal, unit_to_user

from schnet_model.ensemble import Ensemble, EnsembleError
from schnet_model.threads import MD_THREADS, torch_threads
from schnet_model.units import energy_factor

__DRIVER_NAME__ = "sweep-schnet-ensemble"
__DRIVER_CLASS__ = "SchNetEnsembleDriver"


def _flag(value: str | bool) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def _positive(value: str | int, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise EnsembleError(f"i-PI driver option {name}={value}: expected a positive integer, or default")
    return n


class SchNetEnsembleDriver(Dummy_driver):
    """i-PI driver of a SchNet ensemble.

    Args:
        template: a structure file ASE reads (the molecule's atomic numbers, in i-PI's atom order).
        ensemble: an ensemble directory (``sweep ensemble --save DIR``).
        calibrated: scale the reported stds by the ensemble's recalibration (``true``/``false``).
        threads: torch CPU threads per call (default 1; ``default``: torch's setting).
    """

    def __init__(self, template: str, ensemble: str, calibrated: str | bool = True, threads: str | int = MD_THREADS,
                 *args, **kwargs) -> None:
        self.template, self.ensemble_path, self.calibrated = template, ensemble, _flag(calibrated)
        self.threads = None if str(threads).strip().lower() in ("default", "none") else _positive(threads, "threads")
        super().__init__(*args, **kwargs)

    def check_parameters(self) -> None:
        import ase.io

        atoms = ase.io.read(self.template)
        if np.any(atoms.pbc):
            raise EnsembleError(f"{self.template}: periodic cell; "
                                "the SchNet ensemble is molecular (isolated molecules only)")
        self.numbers = np.asarray(atoms.numbers, dtype=np.int64)
        self.ensemble = Ensemble.load(self.ensemble_path)
        self.ensemble.check_elements(self.numbers, f"i-PI template {self.template}")
        self.to_ev = energy_factor(self.ensemble.energy_unit, "eV")

    def _ha(self, x):
        """Ensemble energies (its unit) → Hartree."""
        return unit_to_internal("energy", "electronvolt", np.asarray(x) * self.to_ev)

    def compute_structure(self, cell: np.ndarray, pos: np.ndarray):
        """(energy Ha, forces [n, 3] Ha/Bohr, virial [3, 3] (zero: no cell), extras JSON) at ``pos`` (Bohr)."""
        pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
        if len(pos) != len(self.numbers):
            raise EnsembleError(f"i-PI sent {len(pos)} atoms; the template {self.template} has {len(self.numbers)}")
        r = unit_to_user("length", "angstrom", pos)  # [n, 3] Å
        with torch_threads(self.threads):
            p = self.ensemble.predict_arrays(self.numbers, r, calibrated=self.calibrated, members=True)
        per_bohr = unit_to_user("length", "angstrom", 1.0)  # Å per Bohr: F/Å × Å/Bohr = F/Bohr
        force = self._ha(p.forces) * per_bohr  # [n, 3]
        members_f = self._ha(p.members_forces) * per_bohr  # [k, n, 3]
        extras = {"committee_pot": self._ha(p.members_energy[:, 0]).tolist(),
                  "committee_force": members_f.reshape(len(members_f), -1).tolist(),
                  "committee_virial": np.zeros((len(members_f), 9)).tolist(),
                  "energy_std": float(self._ha(p.energy_std[0])),
                  "forces_std_max": float(self._ha(p.forces_std_max[0]) * per_bohr),
                  "calibrated": bool(p.calibrated)}
        return float(self._ha(p.energy[0])), force, np.zeros((3, 3)), json.dumps(extras)


def driver_path() -> Path:
    """This file: what ``i-pi-py_driver -m custom -P`` takes."""
    return Path(__file__).resolve()


if __name__ == "__main__":  # python -m schnet_model.engines.ipi → the path for -P
    print(driver_path())
