"""Reference data from a real quantum-chemistry method: Langevin MD labelled by GFN2-xTB.

GFN2-xTB (Bannwarth, Ehlert, Grimme 2019) is run through the ``tblite`` package's ASE
calculator; ASE integrates Langevin dynamics. Output is an MD17-layout npz (``R`` Å, ``z``,
``E`` kcal/mol, ``F`` kcal/mol/Å) with ``e_unit``/``r_unit``/``theory`` metadata.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from schnet_model.units import energy_factor

# Friendly names → ASE g2 collection names.
MOLECULES = {
    "ethanol": "CH3CH2OH",
    "methanol": "CH3OH",
    "water": "H2O",
    "benzene": "C6H6",
    "acetaldehyde": "CH3CHO",
    "formic_acid": "HCOOH",
}


def start_geometry(molecule: str):
    """ASE Atoms for a friendly name or any ASE g2 name."""
    from ase.build import molecule as ase_molecule
    from ase.collections import g2

    name = MOLECULES.get(molecule, molecule)
    if name not in g2.names:
        raise ValueError(f"unknown molecule {molecule!r}; known: {sorted(MOLECULES)} or any ASE g2 name")
    return ase_molecule(name)


def generate_md(
    molecule: str = "ethanol",
    frames: int = 1000,
    temperature: float = 500.0,
    seed: int = 0,
    stride: int = 10,
    equilibration: int = 500,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run Langevin MD with GFN2-xTB and return MD17-layout arrays (kcal/mol, Å).

    Args:
        molecule: start geometry (see :func:`start_geometry`).
        frames: number of frames kept.
        temperature: thermostat temperature in K.
        seed: seeds the initial velocities and the Langevin noise (deterministic).
        stride: MD steps between kept frames.
        equilibration: MD steps discarded first.
        timestep_fs: time step in fs.
        friction_per_fs: Langevin friction in 1/fs.
        progress: called as ``progress(done, total)`` after each kept frame.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from tblite.ase import TBLite

    atoms = start_geometry(molecule)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    atoms.set_constraint(FixCom())
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(
        atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction_per_fs / units.fs, fixcm=False, rng=rng
    )
    dyn.run(equilibration)
    to_kcal = energy_factor("eV", "kcal/mol")
    R, E, F = [], [], []
    for k in range(frames):
        dyn.run(stride)
        R.append(atoms.get_positions())
        E.append(atoms.get_potential_energy() * to_kcal)
        F.append(atoms.get_forces(apply_constraint=False) * to_kcal)  # FixCom would alter them
        if progress is not None:
            progress(k + 1, frames)
    return {
        "R": np.array(R),
        "z": atoms.get_atomic_numbers().astype(np.uint8),
        "E": np.array(E),
        "F": np.array(F),
        "name": np.array(molecule),
        "theory": np.array("GFN2-xTB (tblite)"),
        "e_unit": np.array("kcal/mol"),
        "r_unit": np.array("Ang"),
        "temperature": np.array(float(temperature)),
        "seed": np.array(int(seed)),
    }


def write_npz(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write arrays to ``path`` atomically (temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def label_gfn2(Z: np.ndarray, R: np.ndarray) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (kcal/mol) and forces (kcal/mol/Å) of one geometry."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=Z, positions=R)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    f = energy_factor("eV", "kcal/mol")
    return atoms.get_potential_energy() * f, atoms.get_forces() * f
