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
from ase import Atoms
from ase.io import read, write

from schnet_model.ensemble import Ensemble
from schnet_model.explore import run_trajectory


def start_atoms(path: Path | None, molecule: str) -> Atoms:
    """The first frame of ``path``, or an ASE g2 molecule (``CH3CH2OH`` = ethanol)."""
    if path is not None:
        return read(path, index=0)
    from ase.build import molecule as build

    return build(molecule)


def run(ensemble: Path, start: Path | None, molecule: str, temperature: float, steps: int, threshold: float,
        timestep_fs: float, friction_per_fs: float, seed: int, out: Path, every: int) -> int:
    """Run MD; returns the step at which the uncertainty crossed ``threshold`` (or ``steps`` if it never did)."""

    def show(f: Atoms) -> None:
        i = f.info
        print(f"step {i['step']:6d}  t = {i['time_fs']:8.1f} fs  E = {i['energy']:12.4f} eV ± {i['energy_std']:.4f}  "
              f"max force std = {i['forces_std_max']:.3f} eV/Å  T = {i['temperature_K']:6.0f} K")

    traj = run_trajectory(start_atoms(start, molecule), Ensemble.load(ensemble), temperature, steps, threshold,
                          np.random.default_rng(seed), every, timestep_fs, friction_per_fs, on_frame=show)
    if traj.stopped_at is not None:
        last = traj.frames[-1]
        a = int(np.argmax(last.arrays["forces_std_norm"]))
        print(f"stopped at step {traj.stopped_at}: atom {a} ({last[a].symbol}) has force std "
              f"{last.info['forces_std_max']:.3f} eV/Å > {threshold} eV/Å")
    else:
        print(f"finished {steps} steps; the force std stayed below {threshold} eV/Å")
    write(out, traj.frames, format="extxyz")
    print(f"{len(traj.frames)} frames with energies, forces and their stds written to {out}")
    return steps if traj.stopped_at is None else traj.stopped_at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ensemble", type=Path,
                    help="ensemble directory (sweep ensemble --save DIR) or a downloaded models:/ model")
    ap.add_argument("--start", type=Path, default=None, help="starting geometry (first frame of any ASE-readable file)")
    ap.add_argument("--molecule", default="CH3CH2OH",
                    help="ASE g2 molecule when --start is not given (default ethanol)")
    ap.add_argument("--temperature", type=float, default=500.0, help="K")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=1.0, help="stop when a per-atom force std exceeds this (eV/Å)")
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=50, help="print and record every N steps")
    ap.add_argument("-o", "--out", type=Path, default=Path("md_uncertainty.extxyz"))
    a = ap.parse_args()
    run(a.ensemble, a.start, a.molecule, a.temperature, a.steps, a.threshold, a.timestep, a.friction, a.seed, a.out,
        a.every)


if __name__ == "__main__":
    main()
