"""The ensemble as an OpenMM force, its uncertainty for reporters, and an OpenMM-ML potential.

OpenMM's units are nm and kJ/mol; the ensemble's are Å and its training unit, so every call
converts explicitly. :class:`EnsembleForce` wraps ``openmm.PythonForce`` (OpenMM ≥ 8.3): each force
evaluation predicts the molecule with all k members and keeps the step's uncertainty
(:class:`StepUncertainty`) for :class:`UncertaintyReporter`, which writes it and can stop the run
(:class:`UncertaintyExceeded`) or flag the steps where the committee disagrees.

With OpenMM-ML installed, ``MLPotential("sweep-schnet-ensemble", ensemble=DIR).createSystem(topology)``
builds the same force (the entry point ``openmmml.potentials`` of this package registers it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from schnet_model.ensemble import EnsembleError, SchNetEnsemble
from schnet_model.units import energy_factor

NM = 10.0  # Å per nm


@dataclass
class StepUncertainty:
    """The committee at the latest force evaluation, in OpenMM's units."""

    energy: float  # kJ/mol, ensemble mean
    energy_std: float  # kJ/mol (calibrated unless the force was built with calibrated=False)
    forces_std_max: float  # kJ/mol/nm, the largest per-atom force std norm
    evaluations: int  # force evaluations so far


class UncertaintyExceeded(RuntimeError):
    """The committee's max per-atom force std crossed the reporter's threshold (the run stops here)."""

    def __init__(self, step: int, value: float, threshold: float) -> None:
        super().__init__(f"step {step}: max per-atom force std {value:.4g} kJ/mol/nm exceeds {threshold:.4g} kJ/mol/nm; "
                         "the ensemble is unsure here (label this geometry, or lower the time step/temperature)")
        self.step, self.value, self.threshold = step, value, threshold


@dataclass
class EnsembleForce:
    """An OpenMM force whose energy and forces are the ensemble mean.

    Args:
        ensemble: the ensemble (or a directory ``sweep ensemble --save`` wrote).
        numbers: atomic numbers of the particles it acts on, in order.
        particles: their indices in the System (default: all, in order).
        calibrated: scale the stds by the ensemble's stored recalibration.
    """

    ensemble: SchNetEnsemble | str | Path
    numbers: Sequence[int]
    particles: Sequence[int] | None = None
    calibrated: bool = True
    last: StepUncertainty | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ensemble, SchNetEnsemble):
            self.ensemble = SchNetEnsemble.load(self.ensemble)
        self.numbers = np.asarray(self.numbers, dtype=np.int64)
        self.ensemble.check_elements(self.numbers, "OpenMM system")
        self._kj = energy_factor(self.ensemble.energy_unit, "kJ/mol")  # ensemble unit → kJ/mol
        self._evaluations = 0

    def __call__(self, state) -> tuple[float, np.ndarray]:
        """OpenMM's callback: (energy kJ/mol, forces [n, 3] kJ/mol/nm) at the State's positions."""
        import openmm.unit as u

        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer) * NM  # [n, 3] Å
        p = self.ensemble.predict_arrays(self.numbers, np.asarray(pos, dtype=np.float64), calibrated=self.calibrated)
        self._evaluations += 1
        self.last = StepUncertainty(float(p.energy[0]) * self._kj, float(p.energy_std[0]) * self._kj,
                                    float(p.forces_std_max[0]) * self._kj * NM, self._evaluations)
        return float(p.energy[0]) * self._kj, p.forces * (self._kj * NM)

    def create(self):
        """The ``openmm.PythonForce`` to add to a System (non-periodic: the molecule is isolated)."""
        import openmm

        force = openmm.PythonForce(self)
        if self.particles is not None:
            force.setParticles(list(self.particles))
        force.setName("SchNetEnsemble")
        return force


def add_to_system(system, ensemble: SchNetEnsemble | str | Path, numbers: Sequence[int],
                  particles: Sequence[int] | None = None, calibrated: bool = True, force_group: int = 0) -> EnsembleForce:
    """Add the ensemble to ``system`` (refusing periodic systems); the :class:`EnsembleForce` whose ``last`` holds
    the latest uncertainty."""
    if system.usesPeriodicBoundaryConditions():
        raise EnsembleError("OpenMM system: periodic boundary conditions are not supported (SchNet here is molecular)")
    n = len(particles) if particles is not None else system.getNumParticles()
    if len(numbers) != n:
        raise EnsembleError(f"OpenMM system: {len(numbers)} atomic numbers for {n} particles")
    ef = EnsembleForce(ensemble, numbers, particles, calibrated)
    force = ef.create()
    force.setForceGroup(force_group)
    system.addForce(force)
    return ef


class UncertaintyReporter:
    """An OpenMM reporter of the committee's uncertainty every ``interval`` steps.

    Writes ``step,time [ps],energy [kJ/mol],energy_std [kJ/mol],forces_std_max [kJ/mol/nm]`` lines to
    ``file``; when ``max_forces_std`` (kJ/mol/nm) is crossed it raises :class:`UncertaintyExceeded`
    (``stop=True``: ``Simulation.step`` returns through the exception) or records the step in ``flagged``.
    """

    def __init__(self, force: EnsembleForce, file: str | Path | TextIO | None, interval: int = 1,
                 max_forces_std: float | None = None, stop: bool = True) -> None:
        self.force, self.interval, self.max_forces_std, self.stop = force, interval, max_forces_std, stop
        self._own = isinstance(file, str | Path)
        self.out = open(file, "w") if self._own else file  # noqa: SIM115 (closed by close())
        self.flagged: list[int] = []
        if self.out is not None:
            self.out.write("step,time [ps],energy [kJ/mol],energy_std [kJ/mol],forces_std_max [kJ/mol/nm]\n")

    def describeNextReport(self, simulation) -> dict[str, Any]:  # noqa: N802 (OpenMM's name)
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": False, "include": []}

    def report(self, simulation, state) -> None:
        u = self.force.last
        if u is None:
            return
        step = simulation.currentStep
        if self.out is not None:
            self.out.write(f"{step},{state.getTime()._value:.6g},{u.energy:.10g},{u.energy_std:.6g},{u.forces_std_max:.6g}\n")
            self.out.flush()
        if self.max_forces_std is not None and u.forces_std_max > self.max_forces_std:
            self.flagged.append(step)
            if self.stop:
                raise UncertaintyExceeded(step, u.forces_std_max, self.max_forces_std)

    def close(self) -> None:
        if self._own and self.out is not None:
            self.out.close()


# -- OpenMM-ML ----------------------------------------------------------------------------------------
class _EnsembleImpl:
    """OpenMM-ML implementation: ``MLPotential("sweep-schnet-ensemble", ensemble=DIR)``."""

    def __init__(self, ensemble: SchNetEnsemble | str | Path, calibrated: bool = True) -> None:
        self.ensemble, self.calibrated = ensemble, calibrated

    def addForces(self, topology, system, atoms: Iterable[int] | None, forceGroup: int, **args: Any) -> None:  # noqa: N802,N803
        atoms = list(atoms) if atoms is not None else None
        chosen = list(topology.atoms()) if atoms is None else [a for a in topology.atoms() if a.index in set(atoms)]
        if any(a.element is None for a in chosen):
            raise EnsembleError("OpenMM topology: an atom has no element (virtual sites are not supported)")
        add_to_system(system, self.ensemble, [a.element.atomic_number for a in chosen], atoms, self.calibrated, forceGroup)


class EnsembleImplFactory:
    """OpenMM-ML factory (entry point ``openmmml.potentials``: ``sweep-schnet-ensemble``)."""

    def createImpl(self, name: str, ensemble: SchNetEnsemble | str | Path, calibrated: bool = True, **args: Any):  # noqa: N802
        return _EnsembleImpl(ensemble, calibrated)


__all__ = ["EnsembleForce", "EnsembleImplFactory", "StepUncertainty", "UncertaintyExceeded", "UncertaintyReporter",
           "add_to_system"]
