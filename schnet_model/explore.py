"""Exploration: Langevin MD driven by an ensemble, stopped where its force uncertainty gets too large.

Every step the :class:`~schnet_model.calculator.EnsembleCalculator` returns the ensemble-mean
forces and, per atom, the recalibrated std of the force components (``forces_std_norm =
sqrt(σx² + σy² + σz²)``, eV/Å). A trajectory stops at the first step where the largest per-atom
``forces_std_norm`` exceeds ``threshold`` (eV/Å): it has left the region the training data covered.
The frames it recorded (every ``every`` steps, and the frame that crossed the threshold) are the
candidates an active-learning round selects from (:mod:`orchestrator.learn.select`) and
``examples/md_uncertainty.py`` writes. Several thermostat temperatures (a ladder, as DP-GEN explores) are
shared out over the runs in turn; each frame records the one its run was at (``thermostat_K``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE ≥ 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

from schnet_model.calculator import EnsembleCalculator
from schnet_model.ensemble import Ensemble


@dataclass
class Trajectory:
    """The recorded frames of one run and where it ended."""

    # info: trajectory, step, time_fs, energy (eV), energy_std (eV), forces_std_max (eV/Å),
    # temperature_K (instantaneous), thermostat_K; arrays: forces [n_atoms, 3] eV/Å, forces_std_norm [n_atoms] eV/Å
    frames: list[Atoms]
    stopped_at: int | None  # the step at which the force std crossed the threshold; None: it never did
    steps: int  # steps run


def run_trajectory(atoms: Atoms, ensemble: Ensemble, temperature_K: float, steps: int, threshold: float,
                   rng: np.random.Generator, every: int = 10, timestep_fs: float = 0.5, friction_per_fs: float = 0.01,
                   index: int = 0, on_frame: Callable[[Atoms], None] | None = None) -> Trajectory:
    """Langevin MD of ``atoms`` (a copy; isolated, centre of mass fixed) until ``steps`` or the threshold (eV/Å)."""
    atoms = atoms.copy()
    atoms.pbc = False
    atoms.calc = EnsembleCalculator(ensemble)  # eV, eV/Å, recalibrated std
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())  # no drift of the isolated molecule (instead of Langevin's fixcm)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=friction_per_fs / units.fs,
                   fixcm=False, rng=rng)
    frames: list[Atoms] = []

    def record(step: int) -> None:
        r = atoms.calc.results
        snap = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        snap.info.update(trajectory=index, step=step, time_fs=step * timestep_fs, energy=r["energy"],
                         energy_std=r["energy_std"], forces_std_max=r["forces_std_max"],
                         temperature_K=atoms.get_temperature(), thermostat_K=float(temperature_K))
        snap.arrays["forces"] = np.array(r["forces"])
        snap.arrays["forces_std_norm"] = np.array(r["forces_std_norm"])
        frames.append(snap)
        if on_frame is not None:
            on_frame(snap)

    atoms.get_forces()
    for step in range(steps + 1):
        if step:
            dyn.run(1)
        worst = float(atoms.calc.results["forces_std_max"])
        if worst > threshold:
            record(step)
            return Trajectory(frames, step, step)
        if step % every == 0:
            record(step)
    return Trajectory(frames, None, steps)


def explore(ensemble: Ensemble, starts: list[Atoms], temperature_K: float | Sequence[float], steps: int,
            threshold: float, seed: int = 0, every: int = 10, timestep_fs: float = 0.5,
            friction_per_fs: float = 0.01) -> list[Trajectory]:
    """One trajectory per start geometry, each with its own random stream (``seed``, trajectory index); with several
    temperatures (K), run ``i`` is at ``temperature_K[i % len(temperature_K)]``."""
    temps = [float(temperature_K)] if np.isscalar(temperature_K) else [float(t) for t in temperature_K]  # type: ignore[union-attr]
    return [run_trajectory(a, ensemble, temps[i % len(temps)], steps, threshold, np.random.default_rng([seed, i]),
                           every, timestep_fs, friction_per_fs, index=i) for i, a in enumerate(starts)]


__all__ = ["Trajectory", "explore", "run_trajectory"]
