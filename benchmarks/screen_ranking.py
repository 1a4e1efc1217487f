"""Does a screening rank predict what the final rung gets? Equal epochs vs equal compute vs extrapolated curves.

A budget plan screens configurations on fold 0 for a short allotment, then trains the best for what the final rung
can give each of its folds (the horizon). This benchmark trains each of N configurations (the paper's, then random
draws from the ``rmd17.yaml`` space) on one fold for the whole horizon, one thread each, timing epochs in CPU
seconds of the process (so a loaded machine does not bend the curves), and asks of each ranking rule how well the
first ``--allotment`` seconds (or the paper configuration's epochs in them) predict the best validation loss at the
horizon (the CV objective ρ·E_RMSE² + 3·F_RMSE² with ρ = 0.01, as `sweep run` ranks a searched ρ):

- **equal epochs** — every configuration's loss after the epochs the paper configuration runs in the allotment
  (what the plan did before: a costly configuration got as many epochs as a cheap one);
- **equal compute** — every configuration's best loss after the allotment's CPU seconds;
- **extrapolated** — that curve continued to the horizon (``orchestrator.search.plan.extrapolate``, reported beside
  the rank);
- **halving** — the best third by equal compute go on to three times the allotment and are ranked again there (a
  second screening rung; its regret only).

Each configuration's schedule ends at the horizon (``Trainer.set_horizon`` after every epoch, as in a budgeted
sweep: a cosine decays over it, an exponential or plateau schedule anneals over its last fifth).

For each rule: Spearman's ρ against the loss at the horizon, and the regret of its pick (the loss at the horizon of
the configuration it ranks first ÷ the best at the horizon). Two configurations train at a time (one per core).

    python benchmarks/screen_ranking.py --data aspirin.npz --n-train 800 --n-val 200 --configs 12 --horizon 360
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PAPER = {"n_interactions": 3, "n_filters": 64, "n_atom_basis": 64, "lr": 1e-3, "batch_size": 32,
         "scheduler": "exponential", "rho": 0.01}


def draw(rng: np.random.Generator) -> dict:
    """One configuration of the rmd17.yaml space."""
    return {"n_interactions": int(rng.integers(2, 7)), "n_filters": int(rng.choice([64, 128])),
            "n_atom_basis": int(rng.choice([64, 128])), "lr": float(np.exp(rng.uniform(np.log(3e-4), np.log(5e-3)))),
            "batch_size": int(rng.choice([8, 16, 32])),
            "scheduler": str(rng.choice(["exponential", "cosine"])),
            "rho": float(np.exp(rng.uniform(np.log(1e-3), np.log(1e-1))))}


def train_curve(args: tuple) -> dict:
    """Train one configuration on the fold for ``horizon`` CPU seconds; its (CPU seconds, objective) curve."""
    import torch

    from schnet_model import SchNet, Trainer
    from schnet_model.config import DatasetConfig, ModelConfig, TrainingConfig
    from schnet_model.data.load import load_dataset

    path, n_train, n_val, cfg, horizon, seed = args
    torch.set_num_threads(1)
    mols = load_dataset(DatasetConfig(path=path)).molecules
    idx = np.random.default_rng(seed).permutation(len(mols))
    train, val = mols.subset(idx[:n_train]), mols.subset(idx[n_train:n_train + n_val])
    model = ModelConfig(n_interactions=cfg["n_interactions"], n_filters=cfg["n_filters"],
                        n_atom_basis=cfg["n_atom_basis"])
    training = TrainingConfig(lr=cfg["lr"], batch_size=cfg["batch_size"], scheduler=cfg["scheduler"], rho=cfg["rho"],
                              max_epochs=2000, compile_after=None, seed=seed)
    torch.manual_seed(seed)
    trainer = Trainer(SchNet(model), train, val, training)
    curve, t = [], 0.0
    while t < horizon:
        c0 = time.process_time()
        try:
            r = trainer.run_epoch()
        except Exception as e:  # a diverged configuration: its curve ends
            return {"config": cfg, "curve": curve, "error": str(e)[:200]}
        t += time.process_time() - c0
        curve.append((t, 0.01 * r.val.energy_rmse ** 2 + 3 * (r.val.forces_rmse or 0.0) ** 2))
        trainer.set_horizon((horizon - t) / (t / len(curve)))  # the schedule ends at the horizon, as a sweep's does
    return {"config": cfg, "curve": curve}


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(runs: list[dict], allotment: float, horizon: float) -> dict:
    """Each rule's Spearman ρ against the loss at the horizon and the regret of its pick."""
    from orchestrator.search.plan import extrapolate

    ok = [r for r in runs if r["curve"]]
    truth = [min(v for _, v in r["curve"]) for r in ok]
    paper = next(r for r in ok if r["config"] == PAPER)
    paper_epochs = max(1, sum(1 for t, _ in paper["curve"] if t <= allotment))

    def at_time(r):
        pre = [v for t, v in r["curve"] if t <= allotment] or [r["curve"][0][1]]
        return min(pre)

    def at_epochs(r):
        return min(v for _, v in r["curve"][:paper_epochs])

    def extrap(r):
        pre = [(t, v) for t, v in r["curve"] if t <= allotment] or r["curve"][:1]
        return extrapolate(pre, horizon)

    def best_by(r, seconds):
        return min([v for t, v in r["curve"] if t <= seconds] or [r["curve"][0][1]])

    out = {}
    for name, rule in (("equal epochs", at_epochs), ("equal compute", at_time), ("extrapolated", extrap)):
        score = [rule(r) for r in ok]
        pick = int(np.argmin(score))
        out[name] = {"spearman": spearman(score, truth), "regret": truth[pick] / min(truth),
                     "pick": ok[pick]["config"]}
    # successive halving: the best third at the allotment go on to three times it, ranked again there
    first = sorted(range(len(ok)), key=lambda i: at_time(ok[i]))[:max(1, math.ceil(len(ok) / 3))]
    pick = min(first, key=lambda i: best_by(ok[i], 3 * allotment))
    out["halving"] = {"spearman": float("nan"), "regret": truth[pick] / min(truth), "pick": ok[pick]["config"]}
    out["best"] = ok[int(np.argmin(truth))]["config"]
    out["paper_regret"] = min(v for _, v in paper["curve"]) / min(truth)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset file (npz, xyz, …)")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--configs", type=int, default=12, help="configurations: the paper's + random draws")
    ap.add_argument("--horizon", type=float, default=360.0,
                    help="CPU seconds of training per configuration (the final rung's per fold)")
    ap.add_argument("--allotments", type=float, nargs="+", default=[45.0, 90.0],
                    help="screening CPU seconds to rank at")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    configs = [PAPER] + [draw(rng) for _ in range(a.configs - 1)]
    with ProcessPoolExecutor(a.workers) as pool:
        runs = list(pool.map(train_curve, [(a.data, a.n_train, a.n_val, c, a.horizon, a.seed) for c in configs]))
    result = {"date": str(date.today()), "data": a.data, "horizon": a.horizon, "runs": runs,
              "analysis": {str(s): analyse(runs, s, a.horizon) for s in a.allotments}}
    out = a.out or HERE / "results" / f"screen_ranking_{Path(a.data).stem}_{date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{Path(a.data).name}: {len(configs)} configurations, horizon {a.horizon:.0f} CPU-s, "
          f"{sum(1 for r in runs if r.get('error'))} diverged")
    print("| allotment | rule | Spearman ρ vs loss at horizon | regret of its pick |")
    print("|---|---|---|---|")
    for s, an in result["analysis"].items():
        for rule in ("equal epochs", "equal compute", "extrapolated", "halving"):
            rho = "–" if math.isnan(an[rule]["spearman"]) else f"{an[rule]['spearman']:+.2f}"
            print(f"| {float(s):.0f} s | {rule} | {rho} | {an[rule]['regret']:.2f} |")
        print(f"| {float(s):.0f} s | (paper configuration) | – | {an['paper_regret']:.2f} |")


if __name__ == "__main__":
    main()
