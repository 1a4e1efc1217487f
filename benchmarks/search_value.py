"""Does the search earn its budget? The paper configuration trained alone vs the budget-planned sweep, same wall clock.

For each dataset and seed, two real ``sweep run`` invocations with the same ``search.time_budget`` on this machine:

(a) **paper alone** — the paper configuration (64 features, 3 interactions, lr 1e-3, batch 32, ρ 0.01, exponential
    decay), k folds, one trial, trained until early stopping or the budget (a trial the budget ends keeps its best
    fold states);
(b) **sweep** — the shipped ``search_spaces/rmd17.yaml`` as a user runs it on their own files (its space: 2–6
    interactions, 64/128 filters and atom basis, batch 8/16/32, lr, ρ, the schedule; k = 5; 30 configurations;
    ``search.plan: auto``), ``dataset.path``/``dataset.test_path`` set, within the same budget.

(c) **painn** (``--methods painn``) — PaiNN's paper configuration (Schütt, Unke & Gastegger 2021, MD17: 128
    features, 3 blocks, 20 radial functions, 5 Å cutoff, lr 5e-4, batch 10, decay on plateau; ρ 0.01 as SchNet's),
    k folds, one trial, the same budget: the second model family against SchNet's paper configuration.
    ``--methods painn_budget``: the same with the exponential decay that a budget ends (and cools down), as the
    PaiNN starting point of ``search_spaces/rmd17_families.yaml``. ``--methods painn_small``: PaiNN at 64 features,
    3 blocks, shared filters, lr 1e-3, batch 8, exponential — what the family search chose on aspirin at 25 minutes.
(d) **families** (``--methods families``) — as (b) on ``search_spaces/rmd17_families.yaml``: the search over both
    model families (SchNet and PaiNN, each with its own keys), to see which family the budget picks.

All report the fold-mean (ensemble) force and energy MAE of their best trial on the same held-out test file. Each
row also keeps the plan as printed, the rungs' planned and measured seconds, the cost model's error on the screened
configurations, and the share of the budget's CPU-seconds spent in training epochs. Prints a Markdown table (mean ±
std over seeds) and writes the raw numbers as JSON after every run (seeds outermost: an interrupted benchmark leaves
paired results).

Datasets (``--datasets``): ``ethanol`` (the shipped GFN2-xTB 500 K file, 9 atoms, kcal/mol; test: a GFN2-xTB run at
500 K with another seed), ``acac`` (``../shared`` BOTNet acetylacetone 300 K, 15 atoms, eV: the first 400 frames to
train on, the last 100 to test), ``aspirin`` (21 atoms: a geometry from its SMILES by RDKit — ``pip install rdkit``
— then ``sweep data generate`` GFN2-xTB MD at 500 K, 1,000 frames, and an independent 1,000-frame test run; about
3.5 min on one core), ``sgdml`` (``../shared`` sGDML ethanol CCSD(T)/cc-pVTZ, 9 atoms, kcal/mol: frames 0–799 to
train on, 800–999 to test; the file's frames are not time-ordered). Made once into ``benchmarks/.data/``.

    python benchmarks/search_value.py --budget 1500 --seeds 3 --datasets ethanol,acac,aspirin
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
DATA = HERE / ".data"
ASPIRIN_SMILES = "CC(=O)OC1=CC=CC=C1C(=O)O"

UNITS = {"ethanol": "kcal/mol", "acac": "eV", "aspirin": "kcal/mol", "sgdml": "kcal/mol"}
PAPER_TRAINING = {"lr": 1.0e-3, "batch_size": 32, "scheduler": "exponential", "rho": 0.01}
PAINN_TRAINING = {"lr": 5.0e-4, "batch_size": 10, "scheduler": "plateau", "plateau_patience": 10, "rho": 0.01}
PAINN_BUDGET_TRAINING = {**PAINN_TRAINING, "scheduler": "exponential"}  # decays to the budget's horizon, cooled down
# the configuration the family search chose on aspirin at 25 min (2026-12-07), with round numbers: PaiNN at half the
# paper's width with shared filters (about 4× cheaper a step), to test on molecules it was not found on
PAINN_SMALL_TRAINING = {"lr": 1.0e-3, "batch_size": 8, "scheduler": "exponential", "rho": 0.01}
TRAININGS = {"paper": PAPER_TRAINING, "painn": PAINN_TRAINING, "painn_budget": PAINN_BUDGET_TRAINING,
             "painn_small": PAINN_SMALL_TRAINING}
MODELS = {"paper": {}, "painn": {"family": "painn"}, "painn_budget": {"family": "painn"},
          "painn_small": {"family": "painn", "n_atom_basis": 64, "n_interactions": 3, "shared_filters": True}}
METHODS = ("paper", "sweep", "painn", "painn_budget", "painn_small", "families")
SPACES = {"families": "rmd17_families.yaml"}  # the search space of each searching method (default rmd17.yaml)


def sweep_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def generate(molecule: str, seed: int, out: Path, frames: int = 1000) -> Path:
    """GFN2-xTB Langevin MD at 500 K by ``sweep data generate`` (kept: made once)."""
    if not out.exists():
        r = sweep_cli("data", "generate", "--molecule", molecule, "--frames", str(frames), "--temperature", "500",
                      "--seed", str(seed), "-o", str(out))
        if r.returncode != 0:
            raise SystemExit(f"error: {out.name}: sweep data generate failed: {r.stderr.strip()[-300:]}")
    return out


def shared_file(name: str, rel: str) -> Path:
    """``../shared/data/<rel>``, or a one-line exit naming the dataset that needs it."""
    src = SHARED / rel
    if not src.exists():
        raise SystemExit(f"error: {name}: {src} not found (../shared beside the checkout?)")
    return src


def dataset(name: str) -> dict:
    """The ``dataset`` section of a run on ``name`` (its files made first when missing)."""
    DATA.mkdir(exist_ok=True)
    if name == "ethanol":
        return {"path": str(ROOT / "data" / "ethanol_gfn2xtb_500K.npz"), "n_train": 800, "n_val": 200,
                "test_path": str(generate("ethanol", 1, DATA / "ethanol_gfn2xtb_500K_test.npz"))}
    if name == "acac":
        import ase.io

        src = shared_file(name, "botnet_acac/train_300K.xyz")
        train, test = DATA / "acac_train400.xyz", DATA / "acac_test100.xyz"
        if not test.exists():
            frames = ase.io.read(src, ":")
            ase.io.write(train, frames[:400])
            ase.io.write(test, frames[-100:])
        return {"path": str(train), "test_path": str(test), "n_train": 320, "n_val": 80}
    if name == "sgdml":
        src = shared_file(name, "sgdml/ethanol_ccsd_t-train.npz")
        train, test = DATA / "sgdml_ethanol_train800.npz", DATA / "sgdml_ethanol_test200.npz"
        if not test.exists():
            with np.load(src) as d:  # frames are not time-ordered: the last 200 are a fair held-out set
                arrays = {k: d[k] for k in d.files}
            for out, rows in ((train, slice(0, 800)), (test, slice(800, None))):
                np.savez(out, **{k: (v[rows] if k in ("R", "E", "F") else v) for k, v in arrays.items()})
        return {"path": str(train), "test_path": str(test), "n_train": 640, "n_val": 160}
    if name == "aspirin":
        start = DATA / "aspirin.xyz"
        if not start.exists():
            try:
                from rdkit import Chem
                from rdkit.Chem import AllChem
            except ImportError:
                raise SystemExit("error: aspirin: its start geometry comes from RDKit: pip install rdkit") from None
            mol = Chem.AddHs(Chem.MolFromSmiles(ASPIRIN_SMILES))
            AllChem.EmbedMolecule(mol, randomSeed=0)
            AllChem.MMFFOptimizeMolecule(mol)
            start.write_text(Chem.MolToXYZBlock(mol))
        return {"path": str(generate(str(start), 0, DATA / "aspirin_gfn2xtb_500K.npz")), "n_train": 800, "n_val": 200,
                "test_path": str(generate(str(start), 1, DATA / "aspirin_gfn2xtb_500K_test.npz"))}
    raise SystemExit(f"error: --datasets: unknown {name!r} (known: {', '.join(UNITS)})")


def spec(data: dict, method: str, budget: float, seed: int) -> dict:
    """The ``sweep run`` spec of one run: the shipped rmd17.yaml with the user's files (paper: its one
    configuration)."""
    body = yaml.safe_load((ROOT / "search_spaces" / SPACES.get(method, "rmd17.yaml")).read_text())
    body.update(name=f"sv_{method}", dataset={**data, "split_seed": 0}, tracking={"uri": "sqlite:///mlflow.db"},
                storage="sweeps")
    body["cv"] = {**body["cv"], "seed": seed}
    body["training"] = {**body["training"], "seed": seed}
    body["search"] = {**body["search"], "seed": seed, "time_budget": budget}
    if method in TRAININGS:
        paper = TRAININGS[method]
        body["model"] = dict(MODELS[method])
        body["training"] = {k: v for k, v in body["training"].items() if not isinstance(v, dict)} | paper
        body["training"]["lr"] = {"choice": [paper["lr"]]}  # one configuration: the paper's
        body["search"] = {**body["search"], "num_samples": 1, "max_concurrent": 1, "scheduler": "none", "plan": "off",
                          "initial_points": []}  # rmd17.yaml's start point is SchNet's; this one is fixed above
    return body


def calibration_details(client, sweep_run, tmp: str) -> dict:
    """The fit behind the ensemble's std scales (``ensemble_calibration.json`` on the sweep run; empty if absent)."""
    try:
        path = client.download_artifacts(sweep_run.info.run_id, "ensemble_calibration.json", tmp)
    except Exception:  # no ensemble (sweep ensemble failed): nothing to record
        return {}
    return json.loads(Path(path).read_text())["calibration"]["details"]


def run_one(name: str, data: dict, method: str, budget: float, seed: int) -> dict:
    """One ``sweep run``; the best trial's held-out errors and the plan's record from MLflow and sweep.json."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix=f"sv_{name}_{method}_{seed}_") as d:
        path = Path(d) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(data, method, budget, seed)))
        t0 = time.time()
        r = sweep_cli("run", str(path), cwd=Path(d))
        wall = time.time() - t0
        row = {"dataset": name, "method": method, "seed": seed, "budget_s": budget, "wall_s": wall, "rc": r.returncode,
               "plan": [ln for ln in r.stdout.splitlines()
                        if "budget plan" in ln or "rung " in ln or ln.startswith("  ") and "rung" in ln]}
        share = re.search(r"time in training epochs: .* = (\d+)%", " ".join(r.stdout.split()))
        row["train_share"] = int(share.group(1)) / 100 if share else None
        if r.returncode != 0:
            row["error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
            return row
        ens = sweep_cli("ensemble", cwd=Path(d))  # the ensemble of the best trial: its calibrated std on the test file
        row["ensemble_rc"] = ens.returncode
        c = MlflowClient(f"sqlite:///{d}/mlflow.db")
        exp = [e for e in c.search_experiments() if e.name == f"sv_{method}"][0]
        runs = c.search_runs([exp.experiment_id], max_results=10_000)
        sweep_run = next(x for x in runs if x.data.tags.get("sweep.role") == "sweep")
        trials = [x for x in runs if x.data.tags.get("sweep.role") == "trial"]
        statuses: dict[str, int] = {}
        for t in trials:
            statuses[t.data.tags.get("sweep.status", "?")] = statuses.get(t.data.tags.get("sweep.status", "?"), 0) + 1
        best = c.get_run(sweep_run.data.tags["sweep.best_trial_run_id"])
        m = sweep_run.data.metrics
        (meta_path,) = Path(d, "sweeps").glob("sv_*/sweep.json")
        meta = json.loads(meta_path.read_text())
        row.update(forces_mae=m["best_test_forces_mae"], energy_mae=m["best_test_energy_mae"],
                   baseline_forces_mae=m.get("baseline_test_forces_mae"),
                   baseline_fidelity=sweep_run.data.tags.get("sweep.baseline_fidelity"), statuses=statuses,
                   best_params=dict(best.data.params), best_epochs=best.data.metrics.get("best_epoch"),
                   rungs=meta.get("rungs"), screened_costs=meta.get("screened_costs"),
                   cost_model_median_error=m.get("cost_model_median_error"),
                   uncertainty={k.removeprefix("ensemble_test_"): v for k, v in m.items()
                                if k.startswith("ensemble_test_") and k.endswith("_calibrated")},
                   calibration={"energy_scale": m.get("ensemble_energy_scale"),
                                "forces_scale": m.get("ensemble_forces_scale"),
                                "floored": [p for p, v in calibration_details(c, sweep_run, d).items()
                                            if isinstance(v, dict) and v.get("floored")]},
                   trials=[{"params": dict(t.data.params), "status": t.data.tags.get("sweep.status"),
                            "metrics": {k: v for k, v in t.data.metrics.items() if "forces" in k or "epoch" in k}}
                           for t in trials])
        return row


def _ms(x: list[float]) -> str:
    x = np.asarray([v for v in x if v is not None], dtype=float)
    if not len(x):
        return "–"
    return f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0:.3f}"


def table(rows: list[dict]) -> str:
    """Mean ± std over seeds per dataset and method; for the sweep, how many seeds it beat the paper configuration in,
    the rungs' planned and measured seconds and the training share."""
    out = ["| dataset | method | force MAE | energy MAE | better than paper (force, seeds) | screened / k-fold | "
           "rung 1 planned / measured [s] | rung 2 planned / measured [s] | cost model median error | training share | "
           "wall [s] |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        paper = {r["seed"]: r for r in rows if r["dataset"] == name and r["method"] == "paper" and "forces_mae" in r}
        for method in METHODS:
            sel = [r for r in rows if r["dataset"] == name and r["method"] == method]
            if not sel:
                continue
            ok = [r for r in sel if "forces_mae" in r]
            u = UNITS[name]
            failed = len(sel) - len(ok)
            better, rung1, rung2, cost = "", "", "", ""
            if method != "paper":
                paired = [r for r in ok if r["seed"] in paper]
                better = f"{sum(r['forces_mae'] < paper[r['seed']]['forces_mae'] for r in paired)} of {len(paired)}"
            if method == "sweep":
                rung = lambda r, k, w: (r.get("rungs") or {}).get(k, {}).get(w)  # noqa: E731
                rung1 = f"{np.mean([rung(r, 'screen', 'planned_s') or np.nan for r in ok]):.0f} / " \
                        f"{np.mean([rung(r, 'screen', 'measured_s') or np.nan for r in ok]):.0f}"
                rung2 = f"{np.mean([rung(r, 'final', 'planned_s') or np.nan for r in ok]):.0f} / " \
                        f"{np.mean([rung(r, 'final', 'measured_s') or np.nan for r in ok]):.0f}"
                cost = f"{np.nanmean([r.get('cost_model_median_error') or np.nan for r in ok]):.0%}"
            n_screen = np.mean([r["statuses"].get("screened", 0) for r in ok]) if ok else 0
            n_full = np.mean([sum(v for s, v in r["statuses"].items() if s in ("completed", "stopped by budget"))
                              for r in ok]) if ok else 0
            share = _ms([r.get("train_share") for r in sel])
            out.append(f"| {name} | {method}{f' ({failed} failed)' if failed else ''} | "
                       f"{_ms([r['forces_mae'] for r in ok])} {u}/Å | {_ms([r['energy_mae'] for r in ok])} {u} | "
                       f"{better} | "
                       f"{n_screen:.0f} / {n_full:.0f} | {rung1} | {rung2} | {cost} | {share} | "
                       f"{np.mean([r['wall_s'] for r in sel]):.0f} |")
    return "\n".join(out)


def uncertainty_table(rows: list[dict]) -> str:
    """The calibrated ensemble std on the test file, mean over seeds: Spearman ρ(σ, |error|) per force component, per
    atom (‖σ‖ vs ‖error‖) and per molecule (largest atom's), and the miscalibration area (0 is ideal)."""
    keys = ("forces_spearman_calibrated", "forces_spearman_atom_calibrated", "forces_spearman_molecule_calibrated",
            "forces_miscal_area_calibrated", "energy_spearman_calibrated", "energy_miscal_area_calibrated")
    out = ["| dataset | method | force ρ (component) | force ρ (atom) | force ρ (molecule) | force miscal. area | "
           "energy ρ | energy miscal. area |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for method in METHODS:
            sel = [r for r in rows if r["dataset"] == name and r["method"] == method and r.get("uncertainty")]
            if sel:
                out.append(f"| {name} | {method} | " + " | ".join(
                    _ms([r["uncertainty"].get(k) for r in sel]) for k in keys) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1500.0, help="seconds of search.time_budget per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", default="ethanol,acac,aspirin", help=f"comma-separated, of {', '.join(UNITS)}")
    ap.add_argument("--methods", default="paper,sweep", help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"search_value_{date.today()}.json")
    a = ap.parse_args()
    names = [n for n in a.datasets.split(",") if n]
    data = {n: dataset(n) for n in names}  # made (or checked) before any run
    rows = json.loads(a.out.read_text())["rows"] if a.out.exists() else []  # a resumed benchmark keeps its rows ...
    rows = [r for r in rows if "forces_mae" in r]  # ... and runs its failed ones again
    done = {(r["dataset"], r["method"], r["seed"]) for r in rows}
    for seed in a.seeds:
        for n in names:
            for method in [m for m in METHODS if m in a.methods.split(",")]:
                if (n, method, seed) in done:
                    continue
                row = run_one(n, data[n], method, a.budget, seed)
                rows.append(row)
                u = UNITS[n]
                what = (f"force MAE {row['forces_mae']:.4g} {u}/Å, energy MAE {row['energy_mae']:.4g} {u}, "
                        f"{row['statuses']}" if "forces_mae" in row else f"FAILED: {row.get('error')}")
                print(f"{n} {method} seed {seed}: {what}, {row['wall_s']:.0f} s", flush=True)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps({"date": str(date.today()),
                                             "machine": platform.processor() or platform.machine(),
                                             "cpus": os.cpu_count(), "budget_s": a.budget, "rows": rows}, indent=1))
    print(f"\nsearch value at {a.budget:.0f} s per run, {len(a.seeds)} seeds, {os.cpu_count()} CPUs, {date.today()}")
    print(table(rows))
    print("\n" + uncertainty_table(rows))


if __name__ == "__main__":
    main()
