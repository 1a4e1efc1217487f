"""ASE calculator of an ensemble (SchNet or PaiNN): energy, forces and their (calibrated) ensemble stds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from schnet_model.ensemble import Ensemble, EnsembleError
from schnet_model.threads import MD_THREADS, torch_threads
from schnet_model.units import canonical_energy_unit


class EnsembleCalculator(Calculator):
    """ASE calculator backed by :class:`~schnet_model.ensemble.Ensemble`.

    ``results`` after a calculation (ASE units by default: eV and eV/Å):

    - ``energy``, ``free_energy``: ensemble mean (float)
    - ``forces``: ensemble mean [n_atoms, 3]
    - ``energy_std``: std over members (ddof = 1), recalibrated unless ``calibrated=False`` (float)
    - ``forces_std``: per-component std [n_atoms, 3]; ``forces_std_norm`` [n_atoms] = sqrt(σx²+σy²+σz²);
      ``forces_std_max``, ``forces_std_mean``: max / mean of ``forces_std_norm`` over atoms (float)

    Args:
        ensemble: an ensemble, or a directory :meth:`Ensemble.load` reads (``sweep ensemble --save DIR``,
            or a downloaded ``models:/…`` model).
        energy_unit: unit of the results (default eV, ASE's convention; forces in this unit per Å).
        calibrated: apply the ensemble's stored std recalibration.
        device: torch device when loading from a directory.
        threads: torch CPU threads for each calculation (default 1, what small-molecule MD runs fastest with;
            None: torch's setting); restored after it.

    The molecule is treated as isolated: a periodic ``atoms`` is refused.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energy_std", "forces_std", "forces_std_norm",
                              "forces_std_max", "forces_std_mean"]

    def __init__(self, ensemble: Ensemble | str | Path, energy_unit: str = "eV", calibrated: bool = True,
                 device: str = "cpu", threads: int | None = MD_THREADS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads = threads
        self.ensemble = ensemble if isinstance(ensemble, Ensemble) else Ensemble.load(ensemble, device)
        self.energy_unit = canonical_energy_unit(energy_unit)
        self.calibrated = calibrated

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # type: ignore[override]
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        if np.any(a.pbc):
            raise EnsembleError("EnsembleCalculator: periodic boundary conditions are not supported "
                                "(isolated molecules only)")
        with torch_threads(self.threads):
            p = self.ensemble.predict_arrays(np.asarray(a.numbers), np.asarray(a.positions, dtype=np.float64),
                                             calibrated=self.calibrated).to_unit(self.energy_unit)
        self.results = {
            "energy": float(p.energy[0]), "free_energy": float(p.energy[0]), "forces": p.forces,
            "energy_std": float(p.energy_std[0]), "forces_std": p.forces_std, "forces_std_norm": p.forces_std_norm,
            "forces_std_max": float(p.forces_std_max[0]), "forces_std_mean": float(p.forces_std_mean[0]),
        }


SchNetEnsembleCalculator = EnsembleCalculator  # the name before PaiNN: users' imports keep working

__all__ = ["EnsembleCalculator", "SchNetEnsembleCalculator"]
