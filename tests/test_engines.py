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
