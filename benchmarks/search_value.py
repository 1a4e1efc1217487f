"""Does the search earn its budget? The paper configuration trained alone vs the budget-planned sweep, same wall clock.

For each dataset and seed, two real ``sweep run`` invocations with the same ``search.time_budget`` on this machine:

(a) **paper alone** — the paper configuration (64 features, 3 interactions, lr 1e-3, batch 32, ρ 0.01, exponential
    decay), k folds, one trial, trained until early stopping or the budget (a trial the budget ends keeps its best
    fold states);
(b) **sweep** — ``search.plan: auto``: configurations screened on fold 0 (the paper configuration first), then the
    best screened ones trained with all k folds, within the same budget (``search.baseline: screen``, the default:
    the paper configuration is trained with all k folds only if it screens among the best).

Both report the fold-mean (ensemble) force and energy MAE of their best trial on the same held-out test molecules
(the split seed is fixed; the seed varies the folds, the initial weights and the searcher). Prints a Markdown table
(mean ± std over seeds) and writes the raw numbers as JSON.

    python benchmarks/search_value.py --budget 240 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

DATASETS = {  # name → (dataset section, what it is)
    "ethanol_gfn2xtb": ({"path": str(ROOT / "data" / "ethanol_gfn2xtb_500K.npz"), "n_train": 400, "n_val": 200},
                        "ethanol, GFN2-xTB MD at 500 K (shipped), 9 atoms, kcal/mol"),
    "acac_botnet": ({"path": str(SHARED / "botnet_acac" / "train_300K.xyz"), "n_train": 250, "n_val": 100},
                    "acetylacetone, BOTNet 300 K (../shared), 15 atoms, eV"),
    "ethanol_ccsdt": ({"path": str(SHARED / "sgdml" / "ethanol_ccsd_t-train.npz"), "n_train": 400, "n_val": 200},
                      "ethanol, sGDML CCSD(T) (../shared), 9 atoms, kcal/mol"),
}

TRAINING = {"max_epochs": 3000, "early_stopping_patience": 50}
SPACE_MODEL = {"n_interactions": {"int": [2, 4]}, "n_filters": {"choice": [32, 64]}, "n_atom_basis": {"choice": [32, 64]}}
SPACE_TRAINING = {"lr": {"loguniform": [3.0e-4, 5.0e-3]}, "batch_size": {"choice": [8, 16, 32]},
                  "rho": {"loguniform": [1.0e-3, 1.0e-1]}, "scheduler": {"choice": ["exponential", "plateau", "cosine"]}}


def spec(dataset: dict, method: str, budget: float, seed: int, k: int) -> dict:
    """The ``sweep run`` spec of one run."""
    body = {"name": f"sv_{method}", "dataset": {**dataset, "split_seed": 0}, "cv": {"k": k, "seed": seed},
            "tracking": {"uri": "sqlite:///mlflow.db"}, "storage": "sweeps", "resources": "auto"}
    if method == "paper":
        body["model"] = {}
        body["training"] = {**TRAINING, "seed": seed, "lr": {"choice": [1.0e-3]}}  # one configuration: the paper's
        body["search"] = {"num_samples": 1, "max_concurrent": 1, "scheduler": "none", "time_budget": budget,
                          "plan": "off", "seed": seed}
    else:
        body["model"] = dict(SPACE_MODEL)
        body["training"] = {**TRAINING, "seed": seed, **SPACE_TRAINING}
        body["search"] = {"num_samples": 40, "max_concurrent": 2, "scheduler": {"asha": {"grace_period": 10}},
                          "time_budget": budget, "plan": "auto", "seed": seed}
    return body


def run_one(name: str, dataset: dict, method: str, budget: float, seed: int, k: int) -> dict:
    """One ``sweep run``; the best trial's held-out errors from MLflow."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix=f"sv_{name}_{method}_{seed}_") as d:
        path = Path(d) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec(dataset, method, budget, seed, k)))
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path)], cwd=d, capture_output=True,
                           text=True, env={**os.environ, "COLUMNS": "200"})
        wall = time.time() - t0
        if r.returncode != 0:
            raise SystemExit(f"error: {name} {method} seed {seed}: sweep run failed ({r.returncode}): "
                             f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
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
        plan = [line for line in r.stdout.splitlines() if "budget plan" in line or "rung " in line]
        return {"dataset": name, "method": method, "seed": seed, "budget_s": budget, "wall_s": wall,
                "forces_mae": m["best_test_forces_mae"], "energy_mae": m["best_test_energy_mae"],
                "baseline_forces_mae": m.get("baseline_test_forces_mae"),
                "baseline_fidelity": sweep_run.data.tags.get("sweep.baseline_fidelity"), "statuses": statuses,
                "best_params": dict(best.data.params), "best_epochs": best.data.metrics.get("best_epoch"),
                "plan": plan}


def table(rows: list[dict], units: dict[str, str]) -> str:
    out = ["| dataset | method | force MAE | energy MAE | configurations (screened / k-fold) | wall [s] |",
           "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for method in ("paper", "sweep"):
            sel = [r for r in rows if r["dataset"] == name and r["method"] == method]
            if not sel:
                continue
            f, e = np.array([r["forces_mae"] for r in sel]), np.array([r["energy_mae"] for r in sel])
            n_screen = np.mean([r["statuses"].get("screened", 0) for r in sel])
            n_full = np.mean([sum(v for s, v in r["statuses"].items() if s in ("completed", "stopped by budget"))
                              for r in sel])
            u = units[name]
            out.append(f"| {name} | {method} | {f.mean():.3f} ± {f.std(ddof=1) if len(f) > 1 else 0:.3f} {u}/Å | "
                       f"{e.mean():.3f} ± {e.std(ddof=1) if len(e) > 1 else 0:.3f} {u} | {n_screen:.0f} / {n_full:.0f} | "
                       f"{np.mean([r['wall_s'] for r in sel]):.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=240.0, help="seconds of search.time_budget per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--k", type=int, default=3, help="folds per trial")
    ap.add_argument("--datasets", default="ethanol_gfn2xtb,acac_botnet", help=f"comma-separated, of {', '.join(DATASETS)}")
    ap.add_argument("--methods", default="paper,sweep", help="comma-separated, of paper, sweep")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search_value.json")
    a = ap.parse_args()
    names = [n for n in a.datasets.split(",") if n]
    for n in names:
        if n not in DATASETS:
            raise SystemExit(f"error: --datasets: unknown {n!r} (known: {', '.join(DATASETS)})")
        if not Path(DATASETS[n][0]["path"]).exists():
            raise SystemExit(f"error: {n}: {DATASETS[n][0]['path']} not found (../shared beside the checkout?)")
    units = {"ethanol_gfn2xtb": "kcal/mol", "acac_botnet": "eV", "ethanol_ccsdt": "kcal/mol"}
    rows = []
    for seed in range(a.seeds):
        for n in names:
            for method in [m for m in ("paper", "sweep") if m in a.methods.split(",")]:
                row = run_one(n, DATASETS[n][0], method, a.budget, seed, a.k)
                rows.append(row)
                print(f"{n} {method} seed {seed}: force MAE {row['forces_mae']:.4g} {units[n]}/Å, energy MAE "
                      f"{row['energy_mae']:.4g} {units[n]}, {row['statuses']}, {row['wall_s']:.0f} s", flush=True)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps({"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                                             "cpus": os.cpu_count(), "budget_s": a.budget, "k": a.k, "rows": rows}, indent=1))
    print(f"\nsearch value at {a.budget:.0f} s per run, k = {a.k}, {a.seeds} seeds, {os.cpu_count()} CPUs, {date.today()}")
    print(table(rows, units))


if __name__ == "__main__":
    main()
