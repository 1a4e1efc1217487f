"""Langevin MD driven by a SchNet ensemble that stops when the force uncertainty gets too large.

    sweep ensemble quickstart --save ens/                      # the best trial's calibrated ensemble
    python examples/md_uncertainty.py ens/ --temperature 500 --threshold 1.0 --steps 5000

Every step, the calculator returns the ensemble-mean forces and, per atom, the recalibrated
std of the force components (``forces_std``; ``forces_std_norm = sqrt(σx² + σy² + σz²)``). The run
stops at the first step where the largest per-atom ``forces_std_norm`` exceeds ``--threshold``
(eV/Å, ASE's units): the trajectory has left the region the training data covered, and a
reference calculation (or more training data) is needed there. The trajectory, with the
uncertainty of every frame, is written as extended XYZ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE ≥ 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

from schnet_model import SchNetEnsembleCalculator


def start_atoms(path: Path | None, molecule: str) -> Atoms:
    """The first frame of ``path``, or an ASE g2 molecule (``CH3CH2OH`` = ethanol)."""
    if path is not None:
        return read(path, index=0)
    from ase.build import molecule as build

    return build(molecule)


def run(ensemble: Path, start: Path | None, molecule: str, temperature: float, steps: int, threshold: float,
        timestep_fs: float, friction_per_fs: float, seed: int, out: Path, every: int) -> int:
    """Run MD; returns the step at which the uncertainty crossed ``threshold`` (or ``steps`` if it never did)."""
    atoms = start_atoms(start, molecule)
    atoms.pbc = False
    atoms.calc = SchNetEnsembleCalculator(ensemble)  # eV, eV/Å
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())  # no drift of the isolated molecule (instead of Langevin's fixcm)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction_per_fs / units.fs,
                   fixcm=False, rng=rng)
    frames: list[Atoms] = []

    def record(step: int) -> float:
        r = atoms.calc.results
        worst = float(np.max(r["forces_std_norm"]))
        snap = atoms.copy()
        snap.calc = None
        snap.info.update(step=step, time_fs=step * timestep_fs, energy=r["energy"], energy_std=r["energy_std"],
                         forces_std_max=worst, temperature_K=atoms.get_temperature())
        snap.arrays["forces"] = r["forces"]
        snap.arrays["forces_std_norm"] = r["forces_std_norm"]
        frames.append(snap)
        return worst

    atoms.get_forces()
    stopped = steps
    for step in range(steps + 1):
        if step:
            dyn.run(1)
        worst = float(np.max(atoms.calc.results["forces_std_norm"]))
        if step % every == 0 or worst > threshold:
            record(step)
            print(f"step {step:6d}  t = {step * timestep_fs:8.1f} fs  E = {atoms.calc.results['energy']:12.4f} eV "
                  f"± {atoms.calc.results['energy_std']:.4f}  max force std = {worst:.3f} eV/Å  T = {atoms.get_temperature():6.0f} K")
        if worst > threshold:
            a = int(np.argmax(atoms.calc.results["forces_std_norm"]))
            print(f"stopped at step {step}: atom {a} ({atoms[a].symbol}) has force std {worst:.3f} eV/Å > {threshold} eV/Å")
            stopped = step
            break
    else:
        print(f"finished {steps} steps; the force std stayed below {threshold} eV/Å")
    write(out, frames, format="extxyz")
    print(f"{len(frames)} frames with energies, forces and their stds written to {out}")
    return stopped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ensemble", type=Path, help="ensemble directory (sweep ensemble --save DIR) or a downloaded models:/ model")
    ap.add_argument("--start", type=Path, default=None, help="starting geometry (first frame of any ASE-readable file)")
    ap.add_argument("--molecule", default="CH3CH2OH", help="ASE g2 molecule when --start is not given (default ethanol)")
    ap.add_argument("--temperature", type=float, default=500.0, help="K")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=1.0, help="stop when a per-atom force std exceeds this (eV/Å)")
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=50, help="print and record every N steps")
    ap.add_argument("-o", "--out", type=Path, default=Path("md_uncertainty.extxyz"))
    a = ap.parse_args()
    run(a.ensemble, a.start, a.molecule, a.temperature, a.steps, a.threshold, a.timestep, a.friction, a.seed, a.out, a.every)


if __name__ == "__main__":
    main()
