"""Input files for the MD engines from one molecule: what docs/md.md's commands read (``sweep md-inputs``).

From a structure file (its first frame) and the ensemble it will run with, :func:`write_md_inputs` writes:

- ``mol.xyz``: the molecule (Å): ASE's input, and the template the OpenMM and i-PI paths check atoms against;
- ``mol.pdb``: one residue, atom names unique within it (``C1``, ``C2``, ``H1``…): OpenMM's ``PDBFile`` keeps
  one atom per name in a residue, so a PDB with repeated names (ASE's) silently loses atoms there;
- ``init.xyz`` and ``input.xml``: i-PI, NVE (or NVT with ``thermostat``) over a UNIX socket, the ensemble's
  committee in an ``<ffcommittee>`` whose ``<alpha>`` is the ensemble's energy scale (so i-PI's
  ``committee_uncertainty`` is the calibrated energy std), positions, forces and the driver's extras as outputs;
- ``in.setup`` and ``lammps_types.json``: LAMMPS (``units real`` for an ensemble in kcal/mol or kJ/mol,
  ``metal`` for eV; ``boundary f f f``; atoms, masses, velocities, ``fix nve``) and the atom type → atomic
  number map :func:`schnet_model.engines.lammps.attach` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from schnet_model.ensemble import Ensemble, EnsembleError
from schnet_model.files import atomic_dir

FILES = ("mol.xyz", "mol.pdb", "init.xyz", "input.xml", "in.setup", "lammps_types.json")
MARKER = "lammps_types.json"  # what marks a directory this module wrote (with the other FILES)
SOCKET = "sweep-schnet"  # i-PI's UNIX socket name (/tmp/ipi_sweep-schnet)
BOX_MARGIN = 20.0  # Å around the molecule: LAMMPS's fixed box, i-PI's (unused, pbc="false") cell


def read_molecule(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(atomic numbers [n], positions [n, 3] Å) of the first frame of a structure file ASE reads; a periodic one
    or fewer than one atom is refused in one line."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"{path}: no such molecule file")
    try:
        atoms = ase.io.read(path, index=0)
    except Exception as exc:  # noqa: BLE001 (ASE raises many kinds on a malformed file)
        raise EnsembleError(f"{path}: not a structure file ASE reads ({type(exc).__name__}: {exc})") from None
    if np.any(atoms.pbc):
        raise EnsembleError(f"{path}: periodic cell; the SchNet ensemble is molecular (isolated molecules only)")
    if len(atoms) == 0:
        raise EnsembleError(f"{path}: no atoms in the first frame")
    return np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.positions, dtype=np.float64)


def atom_names(numbers: np.ndarray) -> list[str]:
    """PDB atom names unique within the molecule: the element's symbol and its count (``C1``, ``H12``)."""
    from ase.data import chemical_symbols

    seen: dict[int, int] = {}
    names = []
    for z in numbers.tolist():
        seen[z] = seen.get(z, 0) + 1
        names.append(f"{chemical_symbols[z]}{seen[z]}")
    if any(len(n) > 4 for n in names):
        raise EnsembleError(f"PDB: more than 999 atoms of one element ({max(names, key=len)}); PDB names hold 4 "
                            "characters: build the OpenMM Topology in Python instead")
    return names


def pdb_text(numbers: np.ndarray, positions: np.ndarray) -> str:
    """A PDB of one residue ``MOL`` (HETATM records, fixed columns), atom names from :func:`atom_names`."""
    from ase.data import chemical_symbols

    if len(numbers) > 99999:
        raise EnsembleError(f"PDB: {len(numbers)} atoms; the format numbers at most 99999")
    lines = ["REMARK   1 written by sweep md-inputs: positions in Angstrom"]
    for i, (z, name, (x, y, zz)) in enumerate(zip(numbers.tolist(), atom_names(numbers), positions, strict=True), 1):
        element = chemical_symbols[z]
        lines.append(f"HETATM{i:5d} {name:<4s} MOL A   1    {x:8.3f}{y:8.3f}{zz:8.3f}  1.00  0.00"
                     f"          {element:>2s}")
    return "\n".join(lines + ["END"]) + "\n"


def ipi_xyz(numbers: np.ndarray, positions: np.ndarray, box: float) -> str:
    """i-PI's xyz: the comment line carries the cell and the units (Å)."""
    from ase.data import chemical_symbols

    head = (f"{len(numbers)}\n# CELL(abcABC): {box:.1f} {box:.1f} {box:.1f} 90.0 90.0 90.0 "
            "positions{angstrom} cell{angstrom}\n")
    return head + "".join(f"{chemical_symbols[z]} {x:.10f} {y:.10f} {zz:.10f}\n"
                          for z, (x, y, zz) in zip(numbers.tolist(), positions, strict=True))


def ipi_input(alpha: float, temperature: float, timestep_fs: float, steps: int, socket: str = SOCKET,
              thermostat: bool = False) -> str:
    """i-PI's input.xml: the committee over a UNIX socket, NVE (or NVT, Langevin), outputs with units."""
    motion = ('<dynamics mode="nvt"><timestep units="femtosecond">{dt}</timestep>'
              '<thermostat mode="langevin"><tau units="femtosecond">100</tau></thermostat></dynamics>' if thermostat
              else '<dynamics mode="nve"><timestep units="femtosecond">{dt}</timestep></dynamics>'
              ).format(dt=timestep_fs)
    return f"""<simulation verbosity="low" safe_stride="1000">
  <output prefix="sim">
    <properties stride="1" filename="out">[step, time{{picosecond}}, conserved{{electronvolt}}, \
potential{{electronvolt}}, kinetic_md{{electronvolt}}, temperature{{kelvin}}]</properties>
    <trajectory filename="pos" stride="1" format="xyz">positions{{angstrom}}</trajectory>
    <trajectory filename="frc" stride="1" format="xyz">forces{{ev/ang}}</trajectory>
    <!-- the committee's calibrated energy std (Hartree): i-PI's own, with alpha = the energy scale -->
    <trajectory filename="unc" stride="1" extra_type="committee_uncertainty">extras</trajectory>
    <!-- the driver's extras appear prefixed by committee_: energy std (Ha), max per-atom force std (Ha/Bohr) -->
    <trajectory filename="estd" stride="1" extra_type="committee_energy_std">extras</trajectory>
    <trajectory filename="fstd" stride="1" extra_type="committee_forces_std_max">extras</trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  <ffcommittee name="committee">
    <ffsocket name="schnet" mode="unix" pbc="false"><address>{socket}</address></ffsocket>
    <parse_json>true</parse_json>
    <alpha>{alpha:.6g}</alpha>
  </ffcommittee>
  <system>
    <initialize nbeads="1">
      <file mode="xyz">init.xyz</file>
      <velocities mode="thermal" units="kelvin">{temperature:g}</velocities>
    </initialize>
    <forces><force forcefield="committee"/></forces>
    <ensemble><temperature units="kelvin">{temperature:g}</temperature></ensemble>
    <motion mode="dynamics">{motion}</motion>
  </system>
</simulation>
"""


def lammps_units(energy_unit: str) -> str:
    """The LAMMPS ``units`` style for an ensemble's energy unit: ``metal`` (eV) or ``real`` (kcal/mol; kJ/mol and
    Hartree are converted to it by :func:`~schnet_model.engines.lammps.attach`)."""
    return "metal" if energy_unit == "eV" else "real"


def lammps_setup(numbers: np.ndarray, positions: np.ndarray, units: str, temperature: float,
                 timestep_fs: float) -> tuple[str, dict[int, int]]:
    """LAMMPS's in.setup (a fixed box around the molecule, its atoms, masses, velocities, ``fix nve``) and the atom
    type → atomic number map."""
    from ase.data import atomic_masses, chemical_symbols

    elements = list(dict.fromkeys(numbers.tolist()))  # in order of first appearance
    types = {z: t for t, z in enumerate(elements, 1)}
    lo, hi = positions.min(axis=0) - BOX_MARGIN, positions.max(axis=0) + BOX_MARGIN
    timestep = timestep_fs if units == "real" else timestep_fs / 1000.0  # real: fs; metal: ps
    lines = [f"# written by sweep md-inputs; types: {' '.join(f'{t}={chemical_symbols[z]}' for z, t in types.items())}",
             f"units {units}", "atom_style atomic", "atom_modify map yes", "boundary f f f",
             f"region box block {lo[0]:.4f} {hi[0]:.4f} {lo[1]:.4f} {hi[1]:.4f} {lo[2]:.4f} {hi[2]:.4f}",
             f"create_box {len(types)} box"]
    lines += [f"mass {t} {atomic_masses[z]:.6f}" for z, t in types.items()]
    lines += [f"create_atoms {types[z]} single {x:.10f} {y:.10f} {zz:.10f}"
              for z, (x, y, zz) in zip(numbers.tolist(), positions, strict=True)]
    lines += ["pair_style zero 10.0", "pair_coeff * *",  # neighbour lists need a pair style; the ensemble is a fix
              f"velocity all create {temperature:g} 4928459 mom yes rot yes",
              f"timestep {timestep:g}", "fix nve all nve"]
    return "\n".join(lines) + "\n", {t: z for z, t in types.items()}


def write_md_inputs(molecule: str | Path, ensemble: Ensemble | str | Path, out: str | Path,
                    temperature: float = 300.0, timestep_fs: float = 0.5, steps: int = 1000,
                    thermostat: bool = False) -> list[Path]:
    """Write :data:`FILES` for ``molecule`` into the directory ``out`` (whole or not at all); the paths written.

    The molecule's elements are checked against the ensemble's; the i-PI ``alpha`` is its energy scale and the
    LAMMPS units follow its energy unit."""
    ens = ensemble if isinstance(ensemble, Ensemble) else Ensemble.load(ensemble)
    numbers, positions = read_molecule(molecule)
    ens.check_elements(numbers, str(molecule))
    if not (temperature >= 0 and timestep_fs > 0 and steps >= 1):
        raise EnsembleError(f"temperature {temperature} K, time step {timestep_fs} fs, {steps} steps: expected "
                            "temperature ≥ 0, time step > 0, steps ≥ 1")
    import ase
    import ase.io

    alpha = ens.calibration.energy_scale  # 1 when the ensemble was not recalibrated
    units = lammps_units(ens.energy_unit)
    box = float(np.ptp(positions, axis=0).max() + 2 * BOX_MARGIN)
    setup, type_numbers = lammps_setup(numbers, positions, units, temperature, timestep_fs)
    with atomic_dir(out) as d:
        ase.io.write(d / "mol.xyz", ase.Atoms(numbers=numbers, positions=positions), format="xyz")
        (d / "mol.pdb").write_text(pdb_text(numbers, positions))
        (d / "init.xyz").write_text(ipi_xyz(numbers, positions, box))
        (d / "input.xml").write_text(ipi_input(alpha, temperature, timestep_fs, steps, thermostat=thermostat))
        (d / "in.setup").write_text(setup)
        (d / "lammps_types.json").write_text(json.dumps({str(t): z for t, z in type_numbers.items()}, indent=1) + "\n")
    return [Path(out) / f for f in FILES]


def read_lammps_types(path: str | Path) -> dict[int, int]:
    """The atom type → atomic number map ``lammps_types.json`` holds (keys are JSON strings)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        return {int(t): int(z) for t, z in raw.items()}
    except FileNotFoundError:
        raise EnsembleError(f"{path}: no such type map") from None
    except (ValueError, AttributeError, TypeError) as exc:
        raise EnsembleError(f"{path}: expected a JSON object of atom type → atomic number ({exc})") from None


__all__ = ["FILES", "MARKER", "SOCKET", "atom_names", "pdb_text", "read_lammps_types", "read_molecule",
           "write_md_inputs"]
