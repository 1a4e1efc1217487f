"""Readers of ISO17, QM9 (tarball, schnetpack db), ASE db / extxyz / traj and sGDML xyz; format detection."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import SHARED

from schnet_model.config import DatasetConfig
from schnet_model.data import DataError, read_dataset
from schnet_model.data.load import detect_format, load_dataset
from schnet_model.data.qm9 import QM9_ATOMREF_HA
from schnet_model.units import energy_factor

BOHR = 0.529177210903


def _db(path: Path):
    import ase.db

    return ase.db.connect(str(path))


# -- ISO17 ------------------------------------------------------------------------------------------
ISO_Z = [6] * 7 + [8] * 2 + [1] * 10


def _iso_rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1.5, (19, 3)), float(rng.normal(-11500, 2)), rng.normal(0, 1, (19, 3))) for _ in range(n)]


def _write_iso_db(path: Path, rows) -> None:
    with _db(path) as db:
        for R, e, F in rows:
            db.write(Atoms(numbers=ISO_Z, positions=R), total_energy=e, data={"atomic_forces": F})


@pytest.fixture
def iso17_dir(tmp_path):
    d = tmp_path / "iso17"
    d.mkdir()
    rows = {"reference": _iso_rows(5, 0), "test_within": _iso_rows(2, 1), "test_other": _iso_rows(3, 2)}
    for name, r in rows.items():
        _write_iso_db(d / f"{name}.db", r)
    return d, rows


def _stack(rows):
    return (np.stack([r[0] for r in rows]).reshape(-1, 3), np.array([r[1] for r in rows]),
            np.stack([r[2] for r in rows]).reshape(-1, 3))


@pytest.mark.parametrize("which", ["test_within", "test_other"])
def test_iso17_reference_plus_official_test_db(iso17_dir, which):
    d, rows = iso17_dir
    assert detect_format(d) == "iso17" and detect_format(d.parent) == "iso17"  # archive dir or its parent
    ds = load_dataset(DatasetConfig(path=d, iso17_test=which))
    m, n_test = ds.molecules, len(rows[which])
    R, E, F = _stack(rows["reference"] + rows[which])
    assert len(m) == 5 + n_test and m.energy_unit == "eV" and m.force_unit == "eV/Å"
    assert np.array_equal(m.E, E) and np.array_equal(m.R, R) and np.array_equal(m.F, F)
    assert m.Z.tolist() == ISO_Z * (5 + n_test) and m.n_atoms.tolist() == [19] * (5 + n_test)
    assert ds.test.tolist() == list(range(5, 5 + n_test)) and ds.train_pool.tolist() == list(range(5))
    assert m.meta["iso17_test"] == which and m.meta["energy_unit_source"] == "format default (eV)"
    # the reference.db file itself names the same dataset
    ds2 = load_dataset(DatasetConfig(path=d / "reference.db", iso17_test=which))
    assert np.array_equal(ds2.molecules.E, m.E) and np.array_equal(ds2.test, ds.test)


def test_iso17_single_db_units_and_errors(iso17_dir, tmp_path):
    d, rows = iso17_dir
    single = tmp_path / "iso_like.db"
    _write_iso_db(single, rows["test_other"])
    assert detect_format(single) == "iso17"  # by content (total_energy + atomic_forces)
    ds = load_dataset(DatasetConfig(path=single, energy_unit="kcal/mol", unit="eV"))
    _, E, F = _stack(rows["test_other"])
    assert ds.test is None and ds.molecules.energy_unit == "eV"
    assert np.allclose(ds.molecules.E, E * energy_factor("kcal/mol", "eV"), rtol=1e-14)
    assert ds.molecules.meta["energy_unit_source"] == "spec (dataset.energy_unit)"
    # a test db alone (by name) is read alone, without a split
    assert detect_format(d / "test_within.db") == "iso17"
    assert load_dataset(DatasetConfig(path=d / "test_within.db")).test is None
    (d / "test_other.db").unlink()
    with pytest.raises(DataError, match=r"test_other\.db: no such file: ISO17 needs reference\.db and test_other\.db"):
        load_dataset(DatasetConfig(path=d, iso17_test="test_other"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not an ISO17 directory: expected .*empty/reference\.db"):
        load_dataset(DatasetConfig(path=tmp_path / "empty", format="iso17"))
    bad = tmp_path / "bad_iso.db"
    with _db(bad) as db:
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]), total_energy=-1.0,
                 data={"atomic_forces": np.zeros((2, 3))})
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]), energy_x=-1.0,
                 data={"atomic_forces": np.zeros((2, 3))})
    with pytest.raises(DataError, match=r"bad_iso\.db: row 2: no key-value pair 'total_energy'"):
        read_dataset(bad, "iso17")


def test_iso17_reads_old_json_data_rows(tmp_path):
    """ISO17's own files are ASE db version 8: ``data`` stored as JSON text."""
    import sqlite3

    rows = _iso_rows(3, 5)
    _write_iso_db(tmp_path / "old.db", rows)
    con = sqlite3.connect(tmp_path / "old.db")
    con.executemany("UPDATE systems SET data=? WHERE id=?",
                    [(json.dumps({"atomic_forces": r[2].tolist()}), i + 1) for i, r in enumerate(rows)])
    con.execute("UPDATE information SET value='8' WHERE name='version'")
    con.commit()
    con.close()
    m = read_dataset(tmp_path / "old.db", "iso17")
    assert np.array_equal(m.F, _stack(rows)[2]) and np.array_equal(m.E, _stack(rows)[1])


# -- QM9 tarball --------------------------------------------------------------------------------------
QM9_MOLS = {  # id: (atoms, 15 properties); U0 U H G are columns 10-13
    1: ([("C", -0.0126981359, 1.0858041578, 0.0080009958), ("H", 0.002150416, -0.0060313176, 0.0019761204),
         ("H", 1.0117308433, 1.4637511618, 0.0002765748), ("H", -0.540815069, 1.4475266138, -0.8766437152),
         ("H", -0.5238136345, 1.4379326443, 0.9063972942)],
        [157.7118, 157.70997, 157.70699, 0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749,
         -40.47893, -40.476062, -40.475117, -40.498597, 6.469]),
    2: ([("N", -0.0404260543, 1.0241077531, 0.0625637998), ("H", 0.0172574639, 0.0125452063, -2.7232e-05),
         ("H", 0.9157893661, 1.3587451948, -0.0285805897), ("H", -0.5202777357, 1.3435321258, -0.7755426124)],
        [293.60975, 293.54111, 191.39397, 1.6256, 9.46, -0.257, 0.0829, 0.3399, 26.1563, 0.034358,
         -56.525887, -56.523026, -56.522082, -56.544961, 6.316]),
    3: ([("O", -0.0343604951, 0.9775395708, 0.0076015923), ("H", 0.0647664923, 0.0205721989, 0.0015346341),
         ("H", 0.8717903737, 1.3007924048, 0.0006931336)],
        [799.58812, 437.90386, 282.94545, 1.8511, 6.31, -0.2928, 0.0687, 0.3615, 19.0002, 0.021375,
         -76.404702, -76.401867, -76.400922, -76.422349, 6.002]),
}


def _mathematica(x: float) -> str:
    """Write small numbers the way QM9 does: ``2.7232*^-5``."""
    return f"{x:.6e}".replace("e", "*^") if x != 0 and abs(x) < 1e-3 else repr(x)


def _qm9_text(mol_id: int) -> str:
    atoms, props = QM9_MOLS[mol_id]
    lines = [str(len(atoms)), "gdb " + str(mol_id) + "\t" + "\t".join(_mathematica(p) for p in props) + "\t"]
    lines += [f"{s}\t{_mathematica(x)}\t{_mathematica(y)}\t{_mathematica(z)}\t0.1*^-1" for s, x, y, z in atoms]
    lines += ["1341.307\t1341.3284", "C\tC", "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4"]
    return "\n".join(lines) + "\n"


UNCHARACTERIZED = """List of molecules among the 133885 GDB9 molecules for which the Corina generated Cartesian
coordinates and different SMILES and InChI strings when parsed through the program Openbabel.

==============================================================================================
#   Index           GDB17 SMILES         SMILES for B3LYP XYZ      Corina SMILES     D_IJ
==============================================================================================
      2             N                    N                         N                 1.000
==============================================================================================
"""


@pytest.fixture
def qm9_tarball(tmp_path):
    path = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    with tarfile.open(path, "w:bz2") as tar:
        for mol_id in (3, 1, 2):  # out of order on purpose
            blob = _qm9_text(mol_id).encode()
            info = tarfile.TarInfo(f"dsgdb9nsd_{mol_id:06d}.xyz")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


@pytest.mark.parametrize("target, col", [("U0", 10), ("U", 11), ("H", 12), ("G", 13)])
def test_qm9_tarball_targets_and_star_exponents(qm9_tarball, target, col):
    assert detect_format(qm9_tarball) == "qm9"
    m = read_dataset(qm9_tarball, qm9_target=target, qm9_exclude_uncharacterized=False)
    assert len(m) == 3 and m.energy_unit == "Ha" and m.F is None
    assert m.E.tolist() == [QM9_MOLS[i][1][col] for i in (1, 2, 3)]  # sorted by id, values exact
    atoms = [a for i in (1, 2, 3) for a in QM9_MOLS[i][0]]
    assert m.Z.tolist() == [{"H": 1, "C": 6, "N": 7, "O": 8}[a[0]] for a in atoms]
    assert np.array_equal(m.R, np.array([a[1:] for a in atoms]))  # includes -2.7232*^-5
    assert json.loads(m.meta["atomref"]) == {str(z): v for z, v in QM9_ATOMREF_HA[target].items()}
    assert m.meta["atomref_unit"] == "Ha" and m.meta["energy_unit_source"] == "format default (Ha)"


def test_qm9_uncharacterized_exclusion(qm9_tarball):
    with pytest.raises(DataError, match=r"uncharacterized\.txt is missing: put QM9's official uncharacterized\.txt"):
        read_dataset(qm9_tarball)
    (qm9_tarball.parent / "uncharacterized.txt").write_text(UNCHARACTERIZED)
    assert len(read_dataset(qm9_tarball.parent, "qm9")) == 2  # the directory holding the tarball
    ds = load_dataset(DatasetConfig(path=qm9_tarball, unit="eV"))
    m = ds.molecules
    assert len(m) == 2 and m.meta["uncharacterized_excluded"] == "1" and m.energy_unit == "eV"
    assert np.allclose(m.E, np.array([-40.47893, -76.404702]) * energy_factor("Ha", "eV"), rtol=1e-15)
    assert m.n_atoms.tolist() == [5, 3]


def test_qm9_atomref_table():
    assert QM9_ATOMREF_HA["U0"][6] == -37.846772 and QM9_ATOMREF_HA["G"][9] == -99.733544
    assert set(QM9_ATOMREF_HA) == {"U0", "U", "H", "G"}
    assert all(sorted(t) == [1, 6, 7, 8, 9] for t in QM9_ATOMREF_HA.values())


def test_qm9_bad_member(tmp_path):
    path = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
    blob = "\n".join(_qm9_text(1).splitlines()[:4]).encode()  # 5 atoms announced, 2 given
    with tarfile.open(path, "w:bz2") as tar:
        info = tarfile.TarInfo("dsgdb9nsd_000001.xyz")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match=r"dsgdb9nsd_000001\.xyz: line 5: the file ends before its 5 atom lines"):
        read_dataset(path, qm9_exclude_uncharacterized=False)


# -- schnetpack databases -------------------------------------------------------------------------------
def test_spk_qm9_db_target_units_atomrefs(tmp_path):
    path = tmp_path / "qm9.db"
    units = {"energy_U0": "Hartree", "energy_U": "Ha", "enthalpy_H": "Ha", "free_energy": "Ha", "homo": "Ha"}
    refs = {k: [0.0] * 10 for k in units}
    refs["energy_U0"][1], refs["energy_U0"][6] = -0.500273, -37.846772
    rng = np.random.default_rng(3)
    mols = [Atoms("CH4", positions=rng.normal(0, 1, (5, 3))), Atoms("H2O", positions=rng.normal(0, 1, (3, 3)))]
    vals = rng.normal(-50, 10, (2, 4))
    with _db(path) as db:
        for a, v in zip(mols, vals, strict=True):
            db.write(a, data={"energy_U0": v[:1], "energy_U": v[1:2], "enthalpy_H": v[2:3], "free_energy": v[3:4],
                              "homo": np.array([-0.3])})
        db.metadata = {"_property_unit_dict": units, "_distance_unit": "Bohr", "atomrefs": refs}
    assert detect_format(path) == "spk_db"
    for target, col in (("U0", 0), ("G", 3)):
        m = read_dataset(path, qm9_target=target)
        assert m.energy_unit == "Ha" and np.array_equal(m.E, vals[:, col]) and m.F is None
    assert np.allclose(m.R, np.concatenate([a.positions for a in mols]) * BOHR, rtol=1e-15)
    m = read_dataset(path)
    assert m.meta["energy_key"] == "energy_U0" and json.loads(m.meta["atomref"]) == {"1": -0.500273, "6": -37.846772}
    assert m.meta["energy_unit_source"] == "file (_property_unit_dict['energy_U0'])"
    assert read_dataset(path, "qm9").E.tolist() == m.E.tolist()  # format qm9 accepts the schnetpack db
    assert read_dataset(path, energy_key="energy_U").E.tolist() == vals[:, 1].tolist()  # explicit key wins
    with pytest.raises(DataError, match=r"qm9\.db: no property 'dipole_x' \(dataset\.energy_key\); the database has"):
        read_dataset(path, "spk_db", energy_key="dipole_x")


def test_spk_db_energy_forces_unit_conversion(tmp_path):
    path = tmp_path / "md.db"
    rng = np.random.default_rng(4)
    R, E, F = rng.normal(0, 1, (3, 4, 3)), rng.normal(-100, 1, 3), rng.normal(0, 0.05, (3, 4, 3))
    with _db(path) as db:
        for i in range(3):
            db.write(Atoms("CH2O", positions=R[i]), data={"energy": E[i : i + 1], "forces": F[i]})
        db.metadata = {"_property_unit_dict": {"energy": "eV", "forces": "Hartree/Bohr"}, "_distance_unit": "Ang"}
    m = read_dataset(path)
    assert m.energy_unit == "eV" and np.array_equal(m.E, E) and np.array_equal(m.R, R.reshape(-1, 3))
    assert np.allclose(m.F, F.reshape(-1, 3) * energy_factor("Ha", "eV") / BOHR, rtol=1e-14)  # Ha/bohr → eV/Å
    assert m.meta["force_unit_in_file"] == "Hartree/Bohr"


# -- generic ASE: extxyz, traj, plain db ----------------------------------------------------------------
EXTXYZ = """3
Properties=species:S:1:pos:R:3:forces:R:3 energy=-2079.86 pbc="F F F"{unit}
O 0.0 0.0 0.11 0.0 0.0 -0.25
H 0.0 0.76 -0.47 0.0 0.12 0.125
H 0.0 -0.76 -0.47 0.0 -0.12 0.125
5
Properties=species:S:1:pos:R:3:forces:R:3 energy=-1102.5 pbc="F F F"{unit}
C 0.0 0.0 0.0 0.5 0.5 0.5
H 0.63 0.63 0.63 -0.125 -0.125 -0.125
H -0.63 -0.63 0.63 -0.125 -0.125 -0.125
H -0.63 0.63 -0.63 -0.125 -0.125 -0.125
H 0.63 -0.63 -0.63 -0.125 -0.125 -0.125
"""


def test_extxyz_in_ev_different_sizes(tmp_path):
    p = tmp_path / "mix.xyz"
    p.write_text(EXTXYZ.format(unit=""))
    assert detect_format(p) == "extxyz"
    m = read_dataset(p)
    assert m.energy_unit == "eV" and m.E.tolist() == [-2079.86, -1102.5] and m.n_atoms.tolist() == [3, 5]
    assert m.Z.tolist() == [8, 1, 1, 6, 1, 1, 1, 1]
    assert m.F[0].tolist() == [0.0, 0.0, -0.25] and m.R[4].tolist() == [0.63, 0.63, 0.63]
    assert m.meta["energy_unit_source"] == "format default (eV)"


def test_extxyz_declared_units_and_spec_override(tmp_path):
    p = tmp_path / "kcal.extxyz"
    p.write_text(EXTXYZ.format(unit=" energy_unit=kcal/mol"))
    m = read_dataset(p)
    assert m.energy_unit == "kcal/mol" and m.meta["energy_unit_source"] == "file (extxyz energy_unit)"
    m = read_dataset(p, energy_unit="Ha")
    assert m.energy_unit == "Ha" and m.meta["energy_unit_in_file"] == "kcal/mol"
    assert m.meta["energy_unit_source"] == "spec (dataset.energy_unit)"
    p2 = tmp_path / "plain.xyz"
    p2.write_text(EXTXYZ.format(unit=""))
    m = load_dataset(DatasetConfig(path=p2, energy_unit="kcal/mol", length_unit="bohr")).molecules
    assert m.energy_unit == "kcal/mol" and m.E.tolist() == [-2079.86, -1102.5]
    assert np.allclose(m.R[4], np.array([0.63] * 3) * BOHR) and np.allclose(m.F[0], [0, 0, -0.25 / BOHR])


def test_extxyz_custom_keys_and_missing_key(tmp_path):
    p = tmp_path / "ref.xyz"
    p.write_text(EXTXYZ.format(unit="").replace("forces:R:3", "REF_forces:R:3").replace("energy=", "REF_energy="))
    m = read_dataset(p, energy_key="REF_energy", forces_key="REF_forces")
    assert m.E.tolist() == [-2079.86, -1102.5] and m.F[0].tolist() == [0.0, 0.0, -0.25]
    with pytest.raises(DataError, match=r"ref\.xyz: frame 1: no energy 'energy'"):
        read_dataset(p)


def test_extxyz_truncated_names_frame(tmp_path):
    p = tmp_path / "cut.xyz"
    p.write_text("\n".join(EXTXYZ.format(unit="").splitlines()[:8]) + "\n")
    with pytest.raises(DataError, match=r"cut\.xyz: frame 2: "):
        read_dataset(p)
    p.write_text(EXTXYZ.format(unit="").replace("0.76 -0.47", "0.76 -0.4x7"))
    with pytest.raises(DataError, match=r"cut\.xyz: frame 1: "):
        read_dataset(p, "extxyz")


def test_frames_that_cannot_be_right_are_refused_naming_file_frame_and_atoms(tmp_path):
    p = tmp_path / "bad.xyz"
    p.write_text(EXTXYZ.format(unit="").replace("H -0.63 -0.63 0.63", "H 0.63 0.63 0.63"))  # atom 3 onto atom 2
    with pytest.raises(DataError, match=r"bad\.xyz: frame 2: atoms 2 and 3 are 0 Å apart, closer than 0\.1 Å: "
                                        r"not a physical geometry"):
        read_dataset(p)
    p.write_text(EXTXYZ.format(unit="").replace("C 0.0 0.0 0.0", "Xx 0.0 0.0 0.0"))
    with pytest.raises(DataError, match=r"bad\.xyz: frame 2: unknown element 'Xx'"):
        read_dataset(p)
    p.write_text(EXTXYZ.format(unit="").replace("H 0.63 -0.63 -0.63 -0.125", "H 0.63 -0.63 -0.63 nan"))
    with pytest.raises(DataError, match=r"bad\.xyz: frame 2: forces contain NaN or inf"):
        read_dataset(p)


def test_ase_traj_and_plain_db(tmp_path):
    import ase.io

    rng = np.random.default_rng(6)
    frames, E, F = [], [-10.5, -20.25, -7.0], []
    for i, sym in enumerate(["H2O", "CH4", "NH3"]):
        a = Atoms(sym, positions=rng.normal(0, 1, (len(Atoms(sym)), 3)))
        F.append(rng.normal(0, 1, (len(a), 3)))
        a.calc = SinglePointCalculator(a, energy=E[i], forces=F[i])
        frames.append(a)
    ase.io.write(tmp_path / "t.traj", frames)
    with _db(tmp_path / "plain.db") as db:
        for a in frames:
            db.write(a)
    for name in ("t.traj", "plain.db"):
        assert detect_format(tmp_path / name) == "ase"
        m = read_dataset(tmp_path / name)
        assert m.E.tolist() == E and np.array_equal(m.F, np.concatenate(F)) and m.n_atoms.tolist() == [3, 5, 4]
        assert np.array_equal(m.R, np.concatenate([a.positions for a in frames])) and m.energy_unit == "eV"


def test_plain_db_data_properties(tmp_path):
    """An ASE db with energy/forces in row.data (like schnetpack's MD17 test db, no metadata)."""
    p = tmp_path / "eth.db"
    with _db(p) as db:
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), data={"energy": np.array([-31.5]),
                                                                          "forces": np.ones((2, 3))})
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]]), data={"energy": np.array([-31.25])})
    assert detect_format(p) == "ase"
    with pytest.raises(DataError, match=r"eth\.db: row 2: no forces, unlike the first row \(row 1\)"):
        read_dataset(p, energy_unit="kcal/mol")
    with pytest.raises(DataError, match=r"eth\.db: row 1: no energy"):
        read_dataset(p, energy_key="U0")


# -- sGDML xyz -----------------------------------------------------------------------------------------
SGDML = """3
-47952.25
O 0.0 0.0 0.11 0.0 0.0 -2.5
H 0.0 0.76 -0.47 0.0 1.25 1.25
H 0.0 -0.76 -0.47 0.0 -1.25 1.25
2
-722.5
H 0.0 0.0 0.0 0.0 0.0 3.0
H 0.0 0.0 0.74 0.0 0.0 -3.0
"""


def test_sgdml_xyz(tmp_path):
    p = tmp_path / "s.xyz"
    p.write_text(SGDML)
    assert detect_format(p) == "sgdml_xyz"
    m = read_dataset(p)
    assert m.energy_unit == "kcal/mol" and m.E.tolist() == [-47952.25, -722.5] and m.n_atoms.tolist() == [3, 2]
    assert m.Z.tolist() == [8, 1, 1, 1, 1] and m.F[1].tolist() == [0.0, 1.25, 1.25] and m.R[4].tolist() == [0, 0, 0.74]
    m = read_dataset(p, energy_unit="eV")
    assert m.energy_unit == "eV" and m.meta["energy_unit_source"] == "spec (dataset.energy_unit)"


@pytest.mark.parametrize(
    "n_lines, message",
    [
        (8, r"line 9: frame 2: the file ends after 1 of its 2 atom lines \(truncated\)"),
        (6, r"line 7: frame 2: the file ends before the energy line"),
    ],
)
def test_sgdml_xyz_truncated_names_line(tmp_path, n_lines, message):
    p = tmp_path / "t.xyz"
    p.write_text("\n".join(SGDML.splitlines()[:n_lines]) + "\n")
    with pytest.raises(DataError, match=rf"t\.xyz: {message}"):
        read_dataset(p, "sgdml_xyz")


def test_sgdml_xyz_bad_lines(tmp_path):
    p = tmp_path / "b.xyz"
    p.write_text(SGDML.replace("H 0.0 0.76 -0.47 0.0 1.25 1.25", "H 0.0 0.76 -0.47 0.0 1.25"))
    with pytest.raises(DataError, match=r"b\.xyz: line 4: expected 'symbol x y z fx fy fz'"):
        read_dataset(p, "sgdml_xyz")
    p.write_text(SGDML.replace("-722.5", "-722.5 kcal"))
    with pytest.raises(DataError, match=r"b\.xyz: line 7: frame 2: expected the energy alone"):
        read_dataset(p, "sgdml_xyz")
    p.write_text(SGDML.replace("H 0.0 0.0 0.74", "Xq 0.0 0.0 0.74"))
    with pytest.raises(DataError, match=r"b\.xyz: line 9: unknown element 'Xq'"):
        read_dataset(p, "sgdml_xyz")


# -- detection -----------------------------------------------------------------------------------------
def test_detect_format_unknown(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.csv: cannot detect the format from the name; known formats: md17"):
        detect_format(p)
    with pytest.raises(DataError, match="cannot detect the format of this directory"):
        detect_format(tmp_path)
    assert detect_format(tmp_path / "dsgdb9nsd_000001.xyz") == "qm9"


# -- real files in ../shared (skipped when absent) ------------------------------------------------------------
def _shared(rel: str) -> Path:
    return SHARED / rel


@pytest.mark.skipif(not _shared("schnetpack/test_qm9.db").exists(), reason="shared data absent")
def test_shared_spk_qm9_db():
    p = _shared("schnetpack/test_qm9.db")
    assert detect_format(p) == "spk_db"
    m = read_dataset(p)
    assert len(m) == 20 and m.energy_unit == "Ha" and m.F is None and m.E[0] == pytest.approx(-40.47893)
    assert json.loads(m.meta["atomref"])["6"] == -37.846772
    assert read_dataset(p, qm9_target="H").E[0] == pytest.approx(-40.475117)


@pytest.mark.skipif(not _shared("schnetpack/test_iso.db").exists(), reason="shared data absent")
def test_shared_iso_db():
    p = _shared("schnetpack/test_iso.db")
    assert detect_format(p) == "iso17"
    ds = load_dataset(DatasetConfig(path=p))
    m = ds.molecules
    assert len(m) == 40 and m.n_atoms.tolist() == [19] * 40 and m.energy_unit == "eV" and ds.test is None
    assert m.E[0] == pytest.approx(-11505.647279852) and m.elements == [1, 6, 8]


@pytest.mark.skipif(not _shared("schnetpack/test_ethanol.db").exists(), reason="shared data absent")
def test_shared_ethanol_db():
    m = read_dataset(_shared("schnetpack/test_ethanol.db"), energy_unit="kcal/mol")
    assert len(m) == 20 and m.n_atoms.tolist() == [9] * 20 and m.force_unit == "kcal/mol/Å"
    assert -98000 < m.E.mean() < -96000


@pytest.mark.skipif(not _shared("schnetpack/ethanol_snip.xyz").exists(), reason="shared data absent")
def test_shared_ethanol_snip_xyz():
    p = _shared("schnetpack/ethanol_snip.xyz")
    assert detect_format(p) == "sgdml_xyz"
    m = read_dataset(p)
    assert len(m) == 3 and m.energy_unit == "kcal/mol" and m.E[0] == -97208.40600498248
    assert m.F[0].tolist() == [1.4517297437249999, 6.01923561735, 5.2067503058e-07]


@pytest.mark.skipif(not _shared("botnet_acac/train_300K.xyz").exists(), reason="shared data absent")
def test_shared_botnet_extxyz():
    p = _shared("botnet_acac/train_300K.xyz")
    assert detect_format(p) == "extxyz"
    m = read_dataset(p)
    assert len(m) == 500 and m.n_atoms.tolist() == [15] * 500 and m.energy_unit == "eV"
    assert m.E[0] == -9391.45554428476 and m.elements == [1, 6, 8] and m.has_forces


def test_not_a_database_or_tarball(tmp_path):
    (tmp_path / "x.db").write_text("hello")
    with pytest.raises(DataError, match=r"x\.db: not an ASE database"):
        read_dataset(tmp_path / "x.db")
    assert (tmp_path / "x.db").read_text() == "hello"  # ASE never initialised it
    (tmp_path / "dsgdb9nsd.xyz.tar.bz2").write_text("nope")
    with pytest.raises(DataError, match=r"dsgdb9nsd\.xyz\.tar\.bz2: not a tar archive"):
        read_dataset(tmp_path / "dsgdb9nsd.xyz.tar.bz2")


def test_qm9_extracted_directory(tmp_path):
    d = tmp_path / "qm9_xyz"
    d.mkdir()
    for i in (2, 1):
        (d / f"dsgdb9nsd_{i:06d}.xyz").write_text(_qm9_text(i))
    assert detect_format(d) == "qm9"
    m = read_dataset(d, qm9_exclude_uncharacterized=False)
    assert m.E.tolist() == [-40.47893, -56.525887] and m.n_atoms.tolist() == [5, 4]
