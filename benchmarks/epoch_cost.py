"""The budget plan's cost model against measured epochs: eager fold-epochs at one thread over a grid of configurations.

For each dataset: 18 configurations (the paper's; 2 and 6 interactions × 64/128 filters × 64/128 atom basis × batch
8/32; 4 × 128 × 64 at batch 16), one fold of ``--n-train`` + ``--n-val`` molecules, the faster of two epochs each.
Prints each configuration's measured seconds beside ``orchestrator.search.cost.EpochCost``'s estimate (scale set by
the paper configuration's epoch, as the plan sets it), the median and worst error, and with ``--fit`` the
non-negative least-squares coefficients (relative errors) over every dataset measured — what ``COEF`` holds.

    python benchmarks/epoch_cost.py data/ethanol_gfn2xtb_500K.npz:800:200 ../shared/data/botnet_acac/train_300K.xyz:320:80 --fit
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GRID = [(3, 64, 64, 32)] + [(t, f, b, s) for t in (2, 6) for f in (64, 128) for b in (64, 128) for s in (8, 32)] + [
    (4, 128, 64, 16)]


def measure(path: str, n_train: int, n_val: int) -> list[dict]:
    import torch

    from orchestrator.search.plan import measure_fold_epoch
    from schnet_model.config import DatasetConfig, ModelConfig, TrainingConfig
    from schnet_model.data.load import load_dataset

    torch.set_num_threads(1)
    mols = load_dataset(DatasetConfig(path=path)).molecules
    idx = np.random.default_rng(0).permutation(len(mols))
    train, val = mols.subset(idx[:n_train]), mols.subset(idx[n_train:n_train + n_val])
    rows = []
    for t, f, b, s in GRID:
        secs = [measure_fold_epoch(ModelConfig(n_interactions=t, n_filters=f, n_atom_basis=b),
                                   TrainingConfig(batch_size=s), train, val, 1) for _ in range(2)]
        rows.append({"T": t, "F": f, "B": b, "batch": s, "seconds": min(secs)})
        print(f"{Path(path).name} {t}×{f}×{b}, batch {s}: {min(secs):.3f} s", flush=True)
    return rows


def features(n_train: int, n_val: int, atoms: float, t: int, f: int, b: int, s: int) -> list[float]:
    """The cost model's terms (orchestrator/search/cost.py), before their coefficients."""
    n, pairs, steps = n_train + n_val, atoms * (atoms - 1), -(-n_train // s)
    return [n * t * pairs * f / 1e6, n * t * atoms * (b * f + b * b) / 1e7, steps * t / 1e2, steps / 1e2]


def main() -> None:
    from orchestrator.search.cost import COEF, EpochCost
    from schnet_model.config import DatasetConfig, ModelConfig, TrainingConfig
    from schnet_model.data.load import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", help="PATH:N_TRAIN:N_VAL")
    ap.add_argument("--from", dest="saved", type=Path, help="the table and fit of an earlier run's JSON (no measuring)")
    ap.add_argument("--fit", action="store_true", help="refit the coefficients on every dataset measured")
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"epoch_cost_{date.today()}.json")
    a = ap.parse_args()
    runs = json.loads(a.saved.read_text())["runs"] if a.saved else []
    for arg in a.datasets:
        path, n_train, n_val = arg.rsplit(":", 2)
        atoms = float(load_dataset(DatasetConfig(path=path)).molecules.n_atoms.mean())
        runs.append({"data": path, "n_train": int(n_train), "n_val": int(n_val), "atoms": atoms,
                     "rows": measure(path, int(n_train), int(n_val))})
    print("| dataset | configuration | measured [s] | estimated [s] | error |\n|---|---|---|---|---|")
    errors = []
    for run in runs:
        cost = EpochCost(run["n_train"], run["n_val"], run["atoms"], {"none": run["atoms"] * (run["atoms"] - 1)})
        paper = run["rows"][0]
        cost = cost.calibrated([(ModelConfig(), TrainingConfig(), paper["seconds"])])
        for r in run["rows"]:
            est = cost.seconds(ModelConfig(n_interactions=r["T"], n_filters=r["F"], n_atom_basis=r["B"]),
                               TrainingConfig(batch_size=r["batch"]))
            errors.append(est / r["seconds"] - 1)
            print(f"| {Path(run['data']).name} | {r['T']}×{r['F']}×{r['B']}, batch {r['batch']} | {r['seconds']:.3f} | "
                  f"{est:.3f} | {errors[-1]:+.0%} |")
    print(f"\nerror of the estimates (scale from the paper configuration's epoch): median {np.median(np.abs(errors)):.0%}, "
          f"worst {np.max(np.abs(errors)):.0%}; coefficients {COEF}")
    if a.fit:
        from scipy.optimize import nnls

        x = np.array([features(run["n_train"], run["n_val"], run["atoms"], r["T"], r["F"], r["B"], r["batch"])
                      for run in runs for r in run["rows"]])
        y = np.array([r["seconds"] for run in runs for r in run["rows"]])
        coef, _ = nnls(x / y[:, None], np.ones_like(y))
        err = x @ coef / y - 1
        print(f"fit (relative errors): pair {coef[0]:.4g}, atom {coef[1]:.4g}, layer {coef[2]:.4g}, step {coef[3]:.4g}; "
              f"median {np.median(np.abs(err)):.0%}, worst {np.max(np.abs(err)):.0%}")
    if a.datasets:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"date": str(date.today()), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
