"""Readers, units, batching and splits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import QUICKSTART_DATA, SHARED, random_molecules

from schnet_model.data import DataError, random_split, read_dataset
from schnet_model.units import UnitError, energy_factor, length_factor


def _write_md17(path, N=6, n=4, e_shape="flat", **extra):
    rng = np.random.default_rng(0)
    R = rng.normal(0, 1.5, (N, n, 3))
    E = rng.normal(-1000, 1, N)
    arrays = {"R": R, "z": np.array([6, 1, 1, 8][:n], np.uint8), "E": E if e_shape == "flat" else E[:, None],
              "F": rng.normal(0, 1, (N, n, 3))}
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_units_conversion_factors():
    assert energy_factor("kcal/mol", "eV") == pytest.approx(0.0433641, rel=1e-6)
    assert energy_factor("Ha", "kcal/mol") == pytest.approx(627.5095, rel=1e-6)
    assert energy_factor("eV", "meV") == pytest.approx(1000.0)
    assert length_factor("bohr") == pytest.approx(0.529177, rel=1e-6)
    with pytest.raises(UnitError, match="unknown energy unit 'kcal'"):
        energy_factor("kcal", "eV")


@pytest.mark.parametrize("e_shape", ["flat", "column"])
def test_md17_reader_both_energy_shapes(tmp_path, e_shape):
    a = _write_md17(tmp_path / "m.npz", e_shape=e_shape)
    d = read_dataset(tmp_path / "m.npz")
    assert len(d) == 6 and d.energy_unit == "kcal/mol" and d.meta["format"] == "md17"
    assert np.allclose(d.E, np.ravel(a["E"]))
    assert np.allclose(d.R.reshape(6, 4, 3), a["R"]) and np.allclose(d.F.reshape(6, 4, 3), a["F"])
    assert d.elements == [1, 6, 8]


def test_rmd17_reader(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "rmd17_ethanol.npz", nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 1], np.uint8),
             coords=rng.normal(0, 1, (5, 9, 3)), energies=rng.normal(-97000, 2, 5), forces=rng.normal(0, 10, (5, 9, 3)),
             old_indices=np.arange(5))
    d = read_dataset(tmp_path / "rmd17_ethanol.npz")
    assert d.meta["format"] == "rmd17" and len(d) == 5 and d.n_atoms.tolist() == [9] * 5
    assert d.has_forces and d.force_unit == "kcal/mol/Å"


def test_units_from_file_and_spec_override(tmp_path):
    a = _write_md17(tmp_path / "b.npz", e_unit=np.array("eV"), r_unit=np.array("bohr"))
    d = read_dataset(tmp_path / "b.npz")
    assert d.energy_unit == "eV"
    assert np.allclose(d.R.reshape(6, 4, 3), a["R"] * 0.529177210903)  # converted to Å
    assert np.allclose(d.F.reshape(6, 4, 3), a["F"] / 0.529177210903)  # eV/bohr → eV/Å
    d2 = read_dataset(tmp_path / "b.npz", energy_unit="Ha", length_unit="Å")
    assert d2.energy_unit == "Ha" and np.allclose(d2.R.reshape(6, 4, 3), a["R"])
    _write_md17(tmp_path / "c.npz", e_unit=np.array("furlongs"))
    with pytest.raises(DataError, match=r"c\.npz: unknown energy unit 'furlongs'"):
        read_dataset(tmp_path / "c.npz")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("E"), "missing key 'E'|unknown npz layout"),
        (lambda a: a.update(F=a["F"][:, :3]), r"'F' has shape \(6, 3, 3\), expected \(6, 4, 3\)"),
        (lambda a: a.update(z=a["z"][:3]), r"'z' has shape \(3,\), expected \(4,\)"),
        (lambda a: a.update(E=np.where(np.arange(6) == 2, np.nan, a["E"])), "frame 3: energy is nan"),
        (lambda a: a.update(E=a["E"][:4]), r"'E' has shape \(4,\), expected \(6,\) or \(6, 1\)"),
    ],
)
def test_bad_npz_inputs_give_clear_errors(tmp_path, mutate, message):
    a = _write_md17(tmp_path / "x.npz")
    mutate(a)
    np.savez(tmp_path / "bad.npz", **a)
    with pytest.raises(DataError, match=message) as e:
        read_dataset(tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "nope.npz")
    _write_md17(tmp_path / "t.npz")
    blob = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="not a readable npz"):
        read_dataset(tmp_path / "t.npz")


def test_batch_layout_and_pair_cache():
    d = random_molecules(4, sizes=(3, 5))
    b = d.batch(np.array([1, 2]), None)
    assert b.n_atoms.tolist() == [5, 3] and b.mol.tolist() == [0] * 5 + [1] * 3
    assert len(b.idx_i) == 5 * 4 + 3 * 2
    assert ((b.mol[b.idx_i] == b.mol[b.idx_j]).all())  # no pair crosses molecules
    assert (b.idx_i != b.idx_j).all()
    assert np.allclose(b.R[:5].numpy(), d.R[d.atom_ptr[1] : d.atom_ptr[2]], atol=1e-6)
    assert d.neighbors(None) is d.neighbors(None)  # computed once


def test_split_is_disjoint_and_seeded():
    s = random_split(100, 60, 20, None, seed=3)
    assert len(s.train) == 60 and len(s.val) == 20 and len(s.test) == 20
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
    assert np.array_equal(s.train, random_split(100, 60, 20, None, seed=3).train)
    with pytest.raises(DataError, match="split asks for 120 molecules"):
        random_split(100, 100, 20, None, seed=0)


def test_quickstart_dataset_is_declared():
    d = read_dataset(QUICKSTART_DATA)
    assert len(d) == 1000 and d.energy_unit == "kcal/mol" and d.meta["theory"].startswith("GFN2-xTB")
    assert d.elements == [1, 6, 8]


@pytest.mark.skipif(not (SHARED / "sgdml" / "ethanol_ccsd_t-train.npz").exists(), reason="../shared not present")
def test_shared_sgdml_ccsdt_file():
    d = read_dataset(SHARED / "sgdml" / "ethanol_ccsd_t-train.npz")
    assert len(d) == 1000 and d.n_atoms[0] == 9 and d.energy_unit == "kcal/mol"
    assert d.E.shape == (1000,) and d.E.mean() < -9.0e4  # CCSD(T) total energies, ~-97,000 kcal/mol


def test_cutoff_pairs_many_matches_per_molecule_lists():
    from schnet_model.data.neighbors import cutoff_pairs, cutoff_pairs_many

    d = random_molecules(50, sizes=(3, 9, 5, 1, 12), seed=9)
    pairs, counts = cutoff_pairs_many(d.R, d.atom_ptr, 2.2, chunk=7)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    for m in range(len(d)):
        ref = cutoff_pairs(d.R[d.atom_ptr[m] : d.atom_ptr[m + 1]], 2.2)
        assert np.array_equal(pairs[ptr[m] : ptr[m + 1]], ref), m
    assert counts.sum() > 0 and counts[3] == 0  # the single atom has no neighbours
