"""The shipped quickstart data carries real GFN2-xTB labels; the generator is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import QUICKSTART_DATA

pytest.importorskip("tblite", reason="tblite (the 'generate' extra) is not installed")

from schnet_model.data.generate import generate_md, label_gfn2  # noqa: E402


def test_shipped_labels_are_gfn2_xtb():
    a = np.load(QUICKSTART_DATA)
    for k in (0, 417, 999):
        e, f = label_gfn2(a["z"], a["R"][k])
        assert e == pytest.approx(a["E"][k], abs=1e-5)  # kcal/mol
        assert np.abs(f - a["F"][k]).max() < 0.02  # kcal/mol/Å (SCF convergence noise)
    assert np.abs(a["F"].sum(axis=1)).max() < 1e-8  # isolated molecule: no net force


def test_forces_are_the_negative_energy_gradient():
    a = np.load(QUICKSTART_DATA)
    z, R = a["z"], a["R"][3]
    h = 1e-4
    for atom, k in [(0, 0), (2, 1), (8, 2)]:
        Rp, Rm = R.copy(), R.copy()
        Rp[atom, k] += h
        Rm[atom, k] -= h
        fd = -(label_gfn2(z, Rp)[0] - label_gfn2(z, Rm)[0]) / (2 * h)
        assert fd == pytest.approx(a["F"][3][atom, k], abs=0.02)


def test_generation_is_deterministic_for_a_seed():
    a = generate_md("water", frames=3, temperature=300, seed=5, stride=2, equilibration=4)
    b = generate_md("water", frames=3, temperature=300, seed=5, stride=2, equilibration=4)
    # identical trajectories up to the SCF convergence of tblite (threads may reorder sums)
    assert np.allclose(a["R"], b["R"], rtol=0, atol=1e-8) and np.allclose(a["E"], b["E"], rtol=0, atol=1e-6)
    assert a["R"].shape == (3, 3, 3) and str(a["e_unit"]) == "kcal/mol"
