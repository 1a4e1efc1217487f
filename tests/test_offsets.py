"""Energy references: the least-squares correction on residuals and the refit decision."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import QUICKSTART_DATA, random_molecules

from schnet_model import read_dataset
from schnet_model.nn.offsets import atomref_correction, element_counts, fit_offsets, reference_energy
from schnet_model.training.refit import plan_refit


def test_correction_is_fit_offsets_convention_on_residuals():
    """Varying compositions: per-element shifts come back exactly; from zero it is ``fit_offsets``' atomref."""
    d = random_molecules(40, sizes=(3, 9, 5))
    shift = np.zeros(100)
    shift[[1, 6, 7, 8]] = [0.3, -1.1, 0.7, 2.0]  # kcal/mol per atom
    delta = atomref_correction(d.Z, d.atom_ptr, reference_energy(d.Z, d.atom_ptr, shift))
    assert np.allclose(delta, shift, rtol=0, atol=1e-12)
    assert np.array_equal(atomref_correction(d.Z, d.atom_ptr, d.E), fit_offsets(d.Z, d.atom_ptr, d.E, None)[0])
    counts, elements = element_counts(d.Z, d.atom_ptr)
    assert elements.tolist() == [1, 6, 7, 8] and counts.sum(1).tolist() == d.n_atoms.tolist()


def test_one_composition_gives_the_minimum_norm_correction():
    """Ethanol (C2H6O) only fixes Σ counts·δ = mean residual: δ ∝ counts, the smallest such δ."""
    d = read_dataset(QUICKSTART_DATA).subset(np.arange(5))
    resid = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    delta = atomref_correction(d.Z, d.atom_ptr, resid)
    assert reference_energy(d.Z, d.atom_ptr, delta) == pytest.approx(np.full(5, 0.3), abs=1e-14)
    assert delta[[1, 6, 8]] == pytest.approx(0.3 * np.array([6, 2, 1]) / 41, abs=1e-15)
    assert np.count_nonzero(delta) == 3


def test_plan_keeps_only_a_strictly_better_validation_mae():
    d = random_molecules(12, sizes=(3, 5))
    train, val = d.subset(np.arange(8)), d.subset(np.arange(8, 12))
    e_train, e_val = train.E - 1.0, val.E - 1.0  # both predicted too low by 1 per molecule
    delta, r = plan_refit(train, val, e_train, e_val, 100)
    assert r.kept and r.train_mean_residual == pytest.approx(1.0) and r.val_mean_residual == pytest.approx(1.0)
    assert r.val_energy_mae_before == pytest.approx(1.0) and r.val_energy_mae_after < r.val_energy_mae_before
    assert r.elements == tuple(train.elements) and delta[list(r.elements)] == pytest.approx(r.correction)
    assert set(r.as_dict()) == {f"offset_refit/{k}" for k in ("val_energy_mae_before", "val_energy_mae_after",
                                                               "train_mean_residual", "val_mean_residual", "kept")}
    assert "kept" in r.format() and "kcal/mol" in r.format()
    delta, r = plan_refit(train, val, e_train, val.E, 100)  # validation already exact: the refit would spoil it
    assert not r.kept and not delta.any() and r.val_energy_mae_after > r.val_energy_mae_before
    delta, r = plan_refit(train, val, np.full(8, np.nan), e_val, 100)  # nothing finite to fit: nothing done
    assert not r.kept and not delta.any() and r.val_energy_mae_after == r.val_energy_mae_before
