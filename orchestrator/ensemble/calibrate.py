"""Recalibration of an assembled ensemble's stds from out-of-fold errors (stored by the trial, checked against
the loaded members) and the ensemble variance on held-out inputs."""


from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.ensemble.report import PropertyErrors
from orchestrator.ensemble.source import EnsembleCommandError
from orchestrator.tracking import keys
from schnet_model.calibration import Calibration, fit_scale_oof
from schnet_model.data.molecules import Molecules
from schnet_model.ensemble import STD_DDOF, Ensemble

MAX_CALIBRATION_MOLECULES = 20_000  # test molecules used for E[std²] and the report (random subset beyond)
def variance_inputs(tests: dict[str, np.ndarray], held_out: str | None) -> tuple[str, np.ndarray, bool]:
    """Which held-out inputs give the ensemble variance E[std²]: the set ``held_out`` of the dataset (drawn like the
    pool, as the out-of-fold errors are), else every test file together (which may lie elsewhere).

    Returns:
        (description, indices, whether they are drawn like the pool).
    """
    if held_out is not None and held_out in tests:
        return held_out, tests[held_out], True
    if not tests:
        return "", np.zeros(0, np.int64), False
    return " + ".join(tests), np.concatenate(list(tests.values())), False


OOF_CHECK_MOLECULES = 32  # stored out-of-fold predictions are checked against the loaded members on this many


def stored_oof(stored: dict[str, np.ndarray] | None, folds: list[tuple[np.ndarray, np.ndarray]], forces: bool
                ) -> dict[str, np.ndarray] | None:
    """The trial's stored out-of-fold predictions when they cover exactly the folds' validation sets, else None."""
    need = [keys.prediction("oof", w) for w in ("idx", "fold", "energy")] + (
        [keys.prediction("oof", "forces")] if forces else [])
    if stored is None or any(n not in stored for n in need):
        return None
    idx, fold = stored[need[0]], stored[need[1]]
    for i, (_, val) in enumerate(folds):
        if not np.array_equal(np.sort(idx[fold == i]), np.sort(val)):
            return None
    return {"idx": idx, "owner": fold, "energy": stored[need[2]], "forces": stored[need[3]] if forces else None}


def oof_predictions(ens: Ensemble, data: Molecules, folds: list[tuple[np.ndarray, np.ndarray]], *,
                    stored: dict[str, np.ndarray] | None, max_molecules: int, rng: np.random.Generator
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each pool molecule's prediction by the member that held it out: the trial's stored ones (``predictions.npz``,
    computed once when each fold finished) after checking a sample against the loaded members, else predicted now.

    Returns ({"idx" [n], "owner" [n], "energy" [n], "forces" [n_atoms, 3] or None}, details).
    """
    forces = data.has_forces
    oof = stored_oof(stored, folds, forces)
    details: dict[str, Any] = {}
    if oof is not None:
        sample = rng.choice(len(oof["idx"]), min(OOF_CHECK_MOLECULES, len(oof["idx"])), replace=False)
        pp = ens.predict(data.subset(oof["idx"][sample]), forces=False, calibrated=False, members=True)
        diff = float(np.max(np.abs(pp.members_energy[oof["owner"][sample], np.arange(len(sample))]
                                   - oof["energy"][sample])))
        details["oof_energy_max_abs_diff_vs_sweep"] = diff
        if diff > 1e-6 * float(np.max(np.abs(oof["energy"]))) + 1e-3:  # not these members' predictions: predict again
            details["oof_stored_rejected"] = True
            oof = None
    if oof is None:
        pool = np.concatenate([v for _, v in folds])  # [n_pool]
        # [n_pool] member that held it out
        owner = np.concatenate([np.full(len(v), i) for i, (_, v) in enumerate(folds)])
        if len(pool) > max_molecules:
            keep = np.sort(rng.choice(len(pool), max_molecules, replace=False))
            pool, owner = pool[keep], owner[keep]
        sub = data.subset(pool)
        pp = ens.predict(sub, forces=forces, calibrated=False, members=True)
        atom_owner = np.repeat(owner, sub.n_atoms)  # [n_pool_atoms]
        return {"idx": pool, "owner": owner, "energy": pp.members_energy[owner, np.arange(len(pool))],
                "forces": pp.members_forces[atom_owner, np.arange(len(sub.Z))] if forces else None}, \
            {**details, "oof_source": "predicted by the loaded members"}
    if len(oof["idx"]) > max_molecules:  # a random subset of molecules, with their atoms
        keep = np.sort(rng.choice(len(oof["idx"]), max_molecules, replace=False))
        atoms = data.subset(oof["idx"]).atom_index(keep)  # stored forces are laid out as the pool's molecules
        oof = {"idx": oof["idx"][keep], "owner": oof["owner"][keep], "energy": oof["energy"][keep],
               "forces": None if oof["forces"] is None else oof["forces"][atoms]}
    return oof, {**details, "oof_source": "stored by the sweep (predictions.npz), checked on a sample"}


def fit_calibration(ens: Ensemble, data: Molecules, folds: list[tuple[np.ndarray, np.ndarray]], *,
                    tests: dict[str, np.ndarray], held_out: str | None,
                    max_molecules: int = MAX_CALIBRATION_MOLECULES, seed: int = 0,
                    stored: dict[str, np.ndarray] | None = None
                    ) -> tuple[Calibration, dict[str, list[PropertyErrors]], dict]:
    """Fit the std scale on out-of-fold errors (pool) and the ensemble variance on held-out inputs; errors per test set.

    Args:
        ens: the ensemble, members in fold order (member i held out ``folds[i][1]``).
        data: the sweep's molecules (the dataset's, then the test files').
        folds: (train, val) indices per fold.
        tests: named test sets (labels used only for the reports). With none, the stds stay uncalibrated (scale 1).
        held_out: the name of the test set held out of the dataset (drawn like the pool), if there is one.
        stored: the trial's ``predictions.npz`` arrays (its out-of-fold predictions are used when they check out).

    Returns:
        (calibration, {test set: [energy errors, force errors]}, out-of-fold predictions).
    """
    rng = np.random.default_rng(seed)
    k = ens.k
    if len(folds) != k:
        raise EnsembleCommandError(f"{len(folds)} folds in split.json but {k} members")
    forces = data.has_forces
    oof, oof_details = oof_predictions(ens, data, folds, stored=stored, max_molecules=max_molecules, rng=rng)
    pool = oof["idx"]
    details: dict[str, Any] = {"k": k, "std_ddof": STD_DDOF, "n_pool": int(len(pool)), **oof_details}
    tests = {name: np.sort(rng.choice(idx, max_molecules, replace=False)) if len(idx) > max_molecules else idx
             for name, idx in tests.items()}
    preds = {name: (data.subset(idx), ens.predict(data.subset(idx), forces=forces, calibrated=False))
             for name, idx in tests.items()}
    props: dict[str, list[PropertyErrors]] = {}
    for name, (mols, pt) in preds.items():
        props[name] = [PropertyErrors("energy", ens.energy_unit)]
        props[name][0].add(pt.energy - mols.E, pt.energy_std)
        if forces:
            props[name].append(PropertyErrors("forces", f"{ens.energy_unit}/Å"))
            props[name][1].add(pt.forces - mols.F, pt.forces_std, mols.atom_ptr)
    source, held, pool_like = variance_inputs(tests, held_out)
    details |= {"variance_inputs": source, "n_test": int(len(held)), "variance_inputs_pool_like": pool_like}
    if not len(held):
        details["reason"] = "no test molecules: nothing held out to measure the ensemble variance on"
        return Calibration(method="identity", details=details), props, oof
    names = [source] if pool_like else list(tests)
    e_std = np.concatenate([preds[n][1].energy_std for n in names])  # [n_held]
    a_e, details["energy"] = fit_scale_oof(oof["energy"] - data.E[pool], e_std, k)
    a_f = 1.0
    atoms = np.concatenate([preds[n][0].n_atoms for n in names])  # [n_held]
    # the widest calibrated std seen on held-out molecules: beyond it a prediction is extrapolation
    # (sweep ensemble says so)
    details["seen_std_max"] = {"energy_per_atom": float(np.max(a_e * e_std / atoms))}
    if forces:
        f_oof = oof["forces"] - data.subset(pool).F  # [n_pool_atoms, 3]
        f_std = np.concatenate([preds[n][1].forces_std for n in names])  # [n_held_atoms, 3]
        a_f, details["forces"] = fit_scale_oof(f_oof, f_std, k)
        details["seen_std_max"]["forces"] = float(np.max(a_f * f_std))
    return (Calibration(energy_scale=a_e, forces_scale=a_f, method="oof-variance-decomposition", details=details),
            props, oof)


def calibration_line(cal: Calibration) -> str:
    """Where the scales come from, in one line (or why there are none)."""
    d = cal.details
    if cal.method == "identity":
        return (f"stds not recalibrated (scale 1): {d.get('reason', 'no calibration data')}; give dataset.n_test or "
                "dataset.test_path to the sweep, or judge the raw stds on a labelled file with --evaluate FILE")
    pool_like = d.get("variance_inputs_pool_like", True)
    line = (f"recalibration (out-of-fold variance decomposition): σ = {cal.energy_scale:.3g}·std for energies, "
            f"{cal.forces_scale:.3g}·std for force components — from the out-of-fold errors of {d['n_pool']:,} pool "
            f"molecules and the ensemble variance on the inputs of {d['variance_inputs']} ({d['n_test']:,} molecules "
            + ("held out of the dataset" if pool_like else "of test files, not drawn from dataset.path")
            + "; their labels unused)")
    floored = [p for p in ("energy", "forces") if d.get(p, {}).get("floored")]
    if floored:  # a² < 1/k contradicts the decomposition: say why it may have happened and what was done
        why = ("noise of a small held-out set, or members that disagree more than they err" if pool_like else
               "the members disagree more on those inputs than on the pool: they are not drawn like it; "
               "dataset.n_test holds out inputs that are")
        a2 = ", ".join(f"{d[p]['a2_raw']:.3g}" for p in floored)
        line += (f"; {' and '.join(floored)}: a² = {a2} < 1/k ({why}), so the scale is floored at "
                 f"1/√k = {d[floored[0]]['floor']:.3g}; judge it by the test errors above")
    return line


__all__ = ["MAX_CALIBRATION_MOLECULES", "OOF_CHECK_MOLECULES", "calibration_line", "fit_calibration", "oof_predictions",
           "stored_oof", "variance_inputs"]
