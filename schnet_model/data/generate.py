"""Reference data from a real quantum-chemistry method: Langevin MD labelled by GFN2-xTB.

GFN2-xTB (Bannwarth, Ehlert, Grimme 2019) is run through the ``tblite`` package's ASE
calculator; ASE integrates Langevin dynamics. Output is an MD17-layout npz (``R`` Å, ``z``,
``E`` kcal/mol, ``F`` kcal/mol/Å) with ``e_unit``/``r_unit``/``theory`` metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from schnet_model.files import atomic_file
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
    """ASE Atoms for a friendly name, any ASE g2 name, or an ASE-readable file of the molecule (its first frame, Å;
    e.g. an xyz written from a SMILES by RDKit)."""
    from ase.build import molecule as ase_molecule
    from ase.collections import g2

    path = Path(molecule)
    if path.suffix and path.is_file():
        import ase.io

        try:
            atoms = ase.io.read(path, index=0)
        except Exception as e:  # ASE raises many kinds on a malformed file
            raise ValueError(f"{path}: not a readable molecule ({type(e).__name__}: {str(e)[:200]})") from None
        if len(atoms) == 0:
            raise ValueError(f"{path}: no atoms")
        atoms.calc, atoms.info = None, {}
        return atoms
    name = MOLECULES.get(molecule, molecule)
    if name not in g2.names:
        raise ValueError(f"unknown molecule {molecule!r}; known: {sorted(MOLECULES)}, any ASE g2 name, or a "
                         "geometry file (xyz, …)")
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
        atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction_per_fs / units.fs, fixcm=False,
        rng=rng,
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
        "name": np.array(Path(molecule).stem if Path(molecule).suffix else molecule),
        "theory": np.array("GFN2-xTB (tblite)"),
        "e_unit": np.array("kcal/mol"),
        "r_unit": np.array("Ang"),
        "temperature": np.array(float(temperature)),
        "seed": np.array(int(seed)),
    }


def write_npz(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write arrays to ``path`` atomically (temporary file renamed into place)."""
    path = Path(path)
    with atomic_file(path, "wb", suffix=".npz") as f:
        np.savez_compressed(f, **arrays)
    return path


def label_gfn2(Z: np.ndarray, R: np.ndarray) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (kcal/mol) and forces (kcal/mol/Å) of one geometry."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=Z, positions=R)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    f = energy_factor("eV", "kcal/mol")
    return atoms.get_potential_energy() * f, atoms.get_forces() * f


def parse_method(method: str) -> tuple[str, str | None, str | None]:
    """``'gfn2-xtb'`` → ('gfn2-xtb', None, None); ``'pyscf:pbe/def2-svp'`` → ('pyscf', 'pbe', 'def2-svp')."""
    m = method.strip().lower()
    if m == "gfn2-xtb":
        return "gfn2-xtb", None, None
    if m.startswith("pyscf:") and "/" in m[6:]:
        functional, basis = m[6:].split("/", 1)
        if functional and basis:
            return "pyscf", functional, basis
    raise ValueError(f"unknown method {method!r}; expected gfn2-xtb or pyscf:<functional>/<basis> "
                     "(e.g. pyscf:pbe/def2-svp)")


def label_pyscf(Z: np.ndarray, R: np.ndarray, functional: str, basis: str) -> tuple[float, np.ndarray]:
    """DFT (or ``hf``) energy (kcal/mol) and forces (kcal/mol/Å) of one neutral molecule with PySCF.

    Restricted Kohn–Sham for even electron counts, unrestricted otherwise.
    """
    from pyscf import dft, gto, scf

    mol = gto.M(atom=[(int(z), tuple(r)) for z, r in zip(Z, R, strict=True)], basis=basis, unit="Angstrom", verbose=0)
    mol.spin = int(sum(Z)) % 2
    mol.build()
    if functional == "hf":
        mf = scf.RHF(mol) if mol.spin == 0 else scf.UHF(mol)
    else:
        mf = dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)
        mf.xc = functional
    e_ha = mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"PySCF {functional}/{basis} SCF did not converge")
    grad_ha_bohr = mf.nuc_grad_method().kernel()  # [n_atoms, 3] Ha/bohr
    ha = energy_factor("Ha", "kcal/mol")
    bohr = 0.529177210903
    return float(e_ha) * ha, -np.asarray(grad_ha_bohr) * ha / bohr


def geometries(path: str | Path) -> dict[str, np.ndarray]:
    """The geometries of an MD17 npz (``R`` Å, ``z``; its other arrays kept) or of any ASE-readable file of one
    molecule.

    Raises ``ValueError`` naming the file when it is missing, unreadable or holds molecules of different compositions.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if "R" not in arrays or "z" not in arrays:
            raise ValueError(f"{path}: expected an MD17 npz with keys R and z")
        return arrays
    from schnet_model.data.formats_ase import read_frames
    from schnet_model.data.molecules import DataError

    try:
        frames = read_frames(path)
    except DataError as e:
        raise ValueError(str(e)) from None
    z = frames[0].numbers
    for k, a in enumerate(frames):
        if not np.array_equal(a.numbers, z):
            raise ValueError(f"{path}: frame {k} has atoms {a.get_chemical_formula()}, "
                             f"frame 0 {frames[0].get_chemical_formula()}; "
                             "one molecule (the same atoms in the same order) per file")
    return {"R": np.array([a.positions for a in frames]), "z": z.astype(np.uint8), "r_unit": np.array("Ang")}


def theory(method: str) -> str:
    """The ``theory`` string a dataset labelled by ``method`` carries: ``GFN2-xTB (tblite)``,
    ``PBE/def2-svp (PySCF)``."""
    kind, functional, basis = parse_method(method)
    return "GFN2-xTB (tblite)" if kind == "gfn2-xtb" else f"{functional.upper()}/{basis} (PySCF)"


def labeller(method: str) -> Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
    """``label(Z, R) -> (E kcal/mol, F [n_atoms, 3] kcal/mol/Å)`` for ``gfn2-xtb`` or ``pyscf:<functional>/<basis>``."""
    kind, functional, basis = parse_method(method)
    if kind == "gfn2-xtb":
        return label_gfn2
    return lambda Z, R: label_pyscf(Z, R, functional, basis)


def relabel(
    arrays: dict[str, np.ndarray], method: str, progress: Callable[[int, int], None] | None = None
) -> dict[str, np.ndarray]:
    """Replace ``E``/``F`` of MD17-layout arrays with labels by ``method`` (kcal/mol, kcal/mol/Å)."""
    label = labeller(method)
    R, z = arrays["R"], arrays["z"]
    E, F = np.empty(len(R)), np.empty(R.shape)
    for k in range(len(R)):
        E[k], F[k] = label(z, R[k])
        if progress is not None:
            progress(k + 1, len(R))
    out = dict(arrays)
    out.update(E=E, F=F, theory=np.array(theory(method)), e_unit=np.array("kcal/mol"))
    return out
