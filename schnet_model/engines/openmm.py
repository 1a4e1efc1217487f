"""The ensemble as an OpenMM force, its uncertainty for reporters, and an OpenMM-ML potential.

OpenMM's units are nm and kJ/mol; the ensemble's are Å and its training unit, so every call
converts explicitly. :class:`EnsembleForce` wraps ``openmm.PythonForce`` (OpenMM ≥ 8.3): each force
evaluation predicts the molecule with all k members and keeps the step's uncertainty
(:class:`StepUncertainty`) for :class:`UncertaintyReporter`, which writes it and can stop the run
(:class:`UncertaintyExceeded`) or flag the steps where the committee disagrees.

With OpenMM-ML installed, ``MLPotential("sweep-schnet-ensemble", ensemble=DIR).createSystem(topology)``
builds the same force (the entry point ``openmmml.potentials`` of this package registers it);
:func:`ensemble_force` finds it in the System for :class:`UncertaintyReporter`.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from schnet_model.ensemble import Ensemble, EnsembleError
from schnet_model.threads import MD_THREADS, torch_threads
from schnet_model.units import energy_factor

NM = 10.0  # Å per nm
_TOKEN_PREFIX = "sweep_ensemble_"  # a global parameter naming the EnsembleForce behind a PythonForce
_FORCES: weakref.WeakValueDictionary[str, EnsembleForce] = weakref.WeakValueDictionary()


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
        super().__init__(f"step {step}: max per-atom force std {value:.4g} kJ/mol/nm "
                         f"exceeds {threshold:.4g} kJ/mol/nm; "
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
        threads: torch CPU threads for each evaluation (default 1; None: torch's setting).
    """

    ensemble: Ensemble | str | Path
    numbers: Sequence[int]
    particles: Sequence[int] | None = None
    calibrated: bool = True
    threads: int | None = MD_THREADS
    last: StepUncertainty | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ensemble, Ensemble):
            self.ensemble = Ensemble.load(self.ensemble)
        self.numbers = np.asarray(self.numbers, dtype=np.int64)
        self.ensemble.check_elements(self.numbers, "OpenMM system")
        self._kj = energy_factor(self.ensemble.energy_unit, "kJ/mol")  # ensemble unit → kJ/mol
        self._evaluations = 0
        self._last_pos: np.ndarray | None = None  # [n, 3] Å of the latest evaluation
        self._last_forces = np.zeros((len(self.numbers), 3))  # [n, 3] kJ/mol/nm there
        self.token = uuid.uuid4().hex  # names this force in the System (see :func:`ensemble_force`)

    def __call__(self, state) -> tuple[float, np.ndarray]:
        """OpenMM's callback: (energy kJ/mol, forces [n, 3] kJ/mol/nm) at the State's positions."""
        import openmm.unit as u

        pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer) * NM  # [n, 3] Å (the force's particles)
        forces = self._evaluate(np.asarray(pos, dtype=np.float64))
        return self.last.energy, forces

    def _evaluate(self, pos: np.ndarray) -> np.ndarray:
        """Predict at ``pos`` ([n, 3] Å), keep the step's uncertainty in ``last``; forces [n, 3] kJ/mol/nm. The same
        positions as the latest evaluation (a reporter's step, then the integrator's next) are not predicted twice."""
        if self._last_pos is not None and np.array_equal(pos, self._last_pos):
            return self._last_forces
        with torch_threads(self.threads):
            p = self.ensemble.predict_arrays(self.numbers, pos, calibrated=self.calibrated)
        self._evaluations += 1
        self._last_pos = pos.copy()
        self._last_forces = p.forces * (self._kj * NM)  # [n, 3] kJ/mol/nm
        self.last = StepUncertainty(float(p.energy[0]) * self._kj, float(p.energy_std[0]) * self._kj,
                                    float(p.forces_std_max[0]) * self._kj * NM, self._evaluations)
        return self._last_forces

    def at(self, positions_nm: np.ndarray) -> StepUncertainty:
        """The committee at these positions ([n_system, 3] nm, the whole System's; this force's particles are
        taken from it): the latest evaluation when it was at exactly these positions, else a fresh one (what a
        reporter needs: LangevinMiddle and Verlet evaluate a step's forces at the start of the next step)."""
        pos = np.asarray(positions_nm, dtype=np.float64) * NM
        if self.particles is not None:
            pos = pos[np.asarray(self.particles, dtype=np.int64)]
        self._evaluate(pos)
        assert self.last is not None
        return self.last

    def create(self):
        """The ``openmm.PythonForce`` to add to a System (non-periodic: the molecule is isolated)."""
        import openmm

        force = openmm.PythonForce(self, {f"{_TOKEN_PREFIX}{self.token}": 0.0})  # the handle ensemble_force finds
        _FORCES[self.token] = self
        if self.particles is not None:
            force.setParticles(list(self.particles))
        force.setName("SchNetEnsemble")  # the name users look the force up by (kept for PaiNN too)
        return force


def template_numbers(template: str | Path | Sequence[int]) -> np.ndarray:
    """Atomic numbers [n] of a template: a structure file ASE reads (its first frame), or the numbers themselves."""
    if isinstance(template, str | Path):
        import ase.io

        try:
            return np.asarray(ase.io.read(template, index=0).numbers, dtype=np.int64)
        except FileNotFoundError:
            raise EnsembleError(f"{template}: no such template file") from None
        except Exception as exc:  # noqa: BLE001 (ASE raises many kinds on a malformed file)
            raise EnsembleError(f"{template}: not a structure file ASE reads ({type(exc).__name__}: {exc})") from None
    return np.asarray(template, dtype=np.int64)


def check_template(numbers: Sequence[int], template: str | Path | Sequence[int], where: str) -> None:
    """Refuse, in one line, a system whose atoms are not the template's (count, then elements in order): e.g. a PDB
    whose repeated atom names made OpenMM keep 3 of ethanol's 9 atoms."""
    want, got = template_numbers(template), np.asarray(numbers, dtype=np.int64)
    name = template if isinstance(template, str | Path) else "the template"
    if len(got) != len(want):
        raise EnsembleError(f"{where}: {len(got)} atoms, but {name} has {len(want)} (a PDB with repeated atom names "
                            "loses atoms in OpenMM's reader: write it with `sweep md-inputs`)")
    bad = np.flatnonzero(got != want)
    if len(bad):
        i = int(bad[0])
        raise EnsembleError(f"{where}: atom {i + 1} is element {got[i]}, but {name} has {want[i]} there "
                            "(the atoms must be in the template's order)")


def add_to_system(system, ensemble: Ensemble | str | Path, numbers: Sequence[int],
                  particles: Sequence[int] | None = None, calibrated: bool = True, force_group: int = 0,
                  template: str | Path | Sequence[int] | None = None,
                  threads: int | None = MD_THREADS) -> EnsembleForce:
    """Add the ensemble to ``system`` (refusing periodic systems, and atoms that are not ``template``'s when one is
    given); the :class:`EnsembleForce` whose ``last`` holds the latest uncertainty (:func:`ensemble_force` finds it
    again from the System)."""
    if system.usesPeriodicBoundaryConditions():
        raise EnsembleError("OpenMM system: periodic boundary conditions are not supported (SchNet here is molecular)")
    n = len(particles) if particles is not None else system.getNumParticles()
    if len(numbers) != n:
        raise EnsembleError(f"OpenMM system: {len(numbers)} atomic numbers for {n} particles")
    if template is not None:
        check_template(numbers, template, "OpenMM system")
    ef = EnsembleForce(ensemble, numbers, particles, calibrated, threads)
    force = ef.create()
    force.setForceGroup(force_group)
    system.addForce(force)
    return ef


def ensemble_force(system) -> EnsembleForce:
    """The :class:`EnsembleForce` in ``system`` (an ``openmm.System``, or a ``Simulation``/``Context``'s), e.g. the
    one ``MLPotential("sweep-schnet-ensemble", ...).createSystem`` added, for :class:`UncertaintyReporter`."""
    if hasattr(system, "context"):  # a Simulation
        system = system.context.getSystem()
    elif hasattr(system, "getSystem"):  # a Context
        system = system.getSystem()
    found = []
    for f in system.getForces():
        for name in getattr(f, "getGlobalParameters", lambda: {})():
            if name.startswith(_TOKEN_PREFIX) and name[len(_TOKEN_PREFIX):] in _FORCES:
                found.append(_FORCES[name[len(_TOKEN_PREFIX):]])
    if not found:
        raise EnsembleError("OpenMM system: no SchNet ensemble force built in this process (add_to_system or "
                            "MLPotential('sweep-schnet-ensemble', ...).createSystem adds one)")
    if len(found) > 1:
        raise EnsembleError(f"OpenMM system: {len(found)} SchNet ensemble forces; keep the one add_to_system returns")
    return found[0]


class UncertaintyReporter:
    """An OpenMM reporter of the committee's uncertainty every ``interval`` steps.

    Writes ``step,time [ps],energy [kJ/mol],energy_std [kJ/mol],forces_std_max [kJ/mol/nm]`` lines to
    ``file``, each the committee at that step's positions (the force's latest evaluation when it was there, else
    one more evaluation); when ``max_forces_std`` (kJ/mol/nm) is crossed it raises :class:`UncertaintyExceeded`
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
        return {"steps": steps, "periodic": False, "include": ["positions"]}

    def report(self, simulation, state) -> None:
        import openmm.unit as unit

        u = self.force.at(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))  # this step's geometry
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
    """OpenMM-ML implementation: ``MLPotential("sweep-schnet-ensemble", ensemble=DIR[, template=FILE])``."""

    def __init__(self, ensemble: Ensemble | str | Path, calibrated: bool = True,
                 template: str | Path | Sequence[int] | None = None, threads: int | None = MD_THREADS) -> None:
        self.ensemble, self.calibrated, self.template, self.threads = ensemble, calibrated, template, threads

    def addForces(self, topology, system, atoms: Iterable[int] | None, forceGroup: int, **args: Any) -> None:  # noqa: N802,N803
        atoms = list(atoms) if atoms is not None else None
        chosen = list(topology.atoms()) if atoms is None else [a for a in topology.atoms() if a.index in set(atoms)]
        if any(a.element is None for a in chosen):
            raise EnsembleError("OpenMM topology: an atom has no element (virtual sites are not supported)")
        add_to_system(system, self.ensemble, [a.element.atomic_number for a in chosen], atoms, self.calibrated,
                      forceGroup, self.template, self.threads)


class EnsembleImplFactory:
    """OpenMM-ML factory (entry point ``openmmml.potentials``: ``sweep-schnet-ensemble``)."""

    def createImpl(self, name: str, ensemble: Ensemble | str | Path, calibrated: bool = True,  # noqa: N802
                   template: str | Path | Sequence[int] | None = None, threads: int | None = MD_THREADS, **args: Any):
        return _EnsembleImpl(ensemble, calibrated, template, threads)


__all__ = ["EnsembleForce", "EnsembleImplFactory", "StepUncertainty", "UncertaintyExceeded", "UncertaintyReporter",
           "add_to_system", "check_template", "ensemble_force", "template_numbers"]
