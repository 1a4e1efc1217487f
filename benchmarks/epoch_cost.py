"""The budget plan's cost model against measured epochs: eager fold-epochs at one thread over a grid of configurations.

For each dataset, SchNet (``--family schnet``): 18 configurations (the paper's; 2 and 6 interactions × 64/128 filters
× 64/128 atom basis × batch 8/32; 4 × 128 × 64 at batch 16); PaiNN (``--family painn``): 10 (the paper's 3 × 128;
2 and 5 interactions × 32/64/128 features × batch 8/32, less the largest), one fold of ``--n-train`` + ``--n-val``
molecules, the faster of two epochs each.
Prints each configuration's measured seconds beside ``orchestrator.search.cost.EpochCost``'s estimate (scale set by
the paper configuration's epoch, as the plan sets it), the median and worst error, and with ``--fit`` the
non-negative least-squares coefficients (relative errors) over every dataset measured — what ``COEF`` holds.

    python benchmarks/epoch_cost.py data/ethanol_gfn2xtb_500K.npz:800:200 \
../shared/data/botnet_acac/train_300K.xyz:320:80 --fit
    python benchmarks/epoch_cost.py --family painn data/ethanol_gfn2xtb_500K.npz:200:50 \
../shared/data/botnet_acac/train_300K.xyz:160:40 --fit
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

GRID = {"schnet": [(3, 64, 64, 32)] + [(t, f, b, s) for t in (2, 6) for f in (64, 128) for b in (64, 128)
                                       for s in (8, 32)] + [(4, 128, 64, 16)],
        "painn": [(3, 128, 128, 32)] + [(t, f, f, s) for t in (2, 5) for f in (32, 64, 128) for s in (8, 32)
                                        if (t, f, s) != (5, 128, 8)][:-1]}
"""(interactions T, filters F, atom basis B, batch) by family; PaiNN's features are F = B."""


def model_of(family: str, t: int, f: int, b: int):
    from schnet_model.config import ModelConfig, PaiNNConfig

    if family == "painn":
        return PaiNNConfig(n_interactions=t, n_atom_basis=b)
    return ModelConfig(n_interactions=t, n_filters=f, n_atom_basis=b)


def measure(path: str, n_train: int, n_val: int, family: str) -> list[dict]:
    import torch

    from orchestrator.search.plan import measure_fold_epoch
    from schnet_model.config import DatasetConfig, TrainingConfig
    from schnet_model.data.load import load_dataset

    torch.set_num_threads(1)
    mols = load_dataset(DatasetConfig(path=path)).molecules
    idx = np.random.default_rng(0).permutation(len(mols))
    train, val = mols.subset(idx[:n_train]), mols.subset(idx[n_train:n_train + n_val])
    rows = []
    for t, f, b, s in GRID[family]:
        secs = [measure_fold_epoch(model_of(family, t, f, b), TrainingConfig(batch_size=s), train, val, 1)
                for _ in range(2)]
        rows.append({"T": t, "F": f, "B": b, "batch": s, "seconds": min(secs)})
        print(f"{Path(path).name} {t}×{f}×{b}, batch {s}: {min(secs):.3f} s", flush=True)
    return rows


def features(run: dict, r: dict, family: str) -> list[float]:
    """The cost model's terms (orchestrator/search/cost.py), before their coefficients."""
    from schnet_model.nn.family import cost_widths

    n, atoms, steps = run["n_train"] + run["n_val"], run["atoms"], -(-run["n_train"] // r["batch"])
    pairs = run["pairs"]
    width, width2 = cost_widths(model_of(family, r["T"], r["F"], r["B"]))
    return [n * r["T"] * pairs * width / 1e6, n * r["T"] * atoms * width2 / 1e7, steps * r["T"] / 1e2, steps / 1e2]


def main() -> None:
    from orchestrator.search.cost import COEF, EpochCost, cutoff_key
    from schnet_model.config import DatasetConfig, TrainingConfig
    from schnet_model.data.load import load_dataset
    from schnet_model.data.neighbors import cutoff_pairs_many

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", help="PATH:N_TRAIN:N_VAL")
    ap.add_argument("--from", dest="saved", type=Path, help="the table and fit of an earlier run's JSON (no measuring)")
    ap.add_argument("--fit", action="store_true", help="refit the coefficients on every dataset measured")
    ap.add_argument("--family", choices=sorted(GRID), default="schnet", help="the model family measured")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    family = a.family
    out = a.out or HERE / "results" / f"epoch_cost{'' if family == 'schnet' else '_' + family}_{date.today()}.json"
    runs = json.loads(a.saved.read_text())["runs"] if a.saved else []
    for arg in a.datasets:
        path, n_train, n_val = arg.rsplit(":", 2)
        mols = load_dataset(DatasetConfig(path=path)).molecules
        atoms = float(mols.n_atoms.mean())
        cutoff = model_of(family, 3, 64, 64).cutoff
        if cutoff is None:
            pairs = atoms * (atoms - 1)
        else:
            part = mols.subset(np.linspace(0, len(mols) - 1, min(200, len(mols))).astype(np.int64))
            pairs = float(np.mean(cutoff_pairs_many(part.R, part.atom_ptr, cutoff)[1]))
        runs.append({"data": path, "n_train": int(n_train), "n_val": int(n_val), "atoms": atoms, "pairs": pairs,
                     "family": family, "rows": measure(path, int(n_train), int(n_val), family)})
    print("| dataset | configuration | measured [s] | estimated [s] | error |\n|---|---|---|---|---|")
    errors = []
    runs = [run for run in runs if run.get("family", "schnet") == family]
    for run in runs:
        run.setdefault("pairs", run["atoms"] * (run["atoms"] - 1))
        first = run["rows"][0]  # the paper configuration: the plan's scale is set from its epoch
        paper_cfg = model_of(family, first["T"], first["F"], first["B"])
        pairs = {"none": run["atoms"] * (run["atoms"] - 1), cutoff_key(paper_cfg.cutoff): run["pairs"]}
        cost = EpochCost(run["n_train"], run["n_val"], run["atoms"], pairs)
        cost = cost.calibrated([(paper_cfg, TrainingConfig(batch_size=first["batch"]), first["seconds"])])
        for r in run["rows"]:
            est = cost.seconds(model_of(family, r["T"], r["F"], r["B"]), TrainingConfig(batch_size=r["batch"]))
            errors.append(est / r["seconds"] - 1)
            print(f"| {Path(run['data']).name} | {r['T']}×{r['F']}×{r['B']}, batch {r['batch']} | {r['seconds']:.3f} | "
                  f"{est:.3f} | {errors[-1]:+.0%} |")
    print("\nerror of the estimates (scale from the paper configuration's epoch): "
          f"median {np.median(np.abs(errors)):.0%}, "
          f"worst {np.max(np.abs(errors)):.0%}; coefficients {COEF[family]}")
    if a.fit:
        from scipy.optimize import nnls

        x = np.array([features(run, r, family) for run in runs for r in run["rows"]])
        y = np.array([r["seconds"] for run in runs for r in run["rows"]])
        coef, _ = nnls(x / y[:, None], np.ones_like(y))
        err = x @ coef / y - 1
        print(f"fit (relative errors): pair {coef[0]:.4g}, atom {coef[1]:.4g}, layer {coef[2]:.4g}, "
              f"step {coef[3]:.4g}; "
              f"median {np.median(np.abs(err)):.0%}, worst {np.max(np.abs(err)):.0%}")
    if a.datasets:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"date": str(date.today()), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
