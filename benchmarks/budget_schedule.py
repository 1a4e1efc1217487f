"""Does a learning-rate schedule sized to the time budget pay? The paper configuration alone, one model, trained for a
fixed wall clock (``training.max_time``) with the paper's exponential decay (×0.96 every 100k steps: barely
decays in a budget), with the same exponential cooling down to 0 over the budget's last fifth (``training.cooldown``,
what a budget now does to an exponential), with ``plateau`` (ReduceLROnPlateau) with and without the same
cooldown, and with ``cosine`` from the same rate, which under a time budget decays to
``min_lr`` (lr/100) over the epochs the budget allows (re-estimated every epoch;
``schnet_model.training.optim.set_horizon``) — what a budgeted sweep's trials do.

Datasets: ``ethanol`` (the shipped GFN2-xTB 500 K file, kcal/mol: 800 train / 100 validation / 100 test, split seed 0),
``acac`` (``../shared`` BOTNet acetylacetone 300 K, eV: the first 400 frames, 320 train / 80 validation, tested on
the last 100 — the same files as ``search_value.py``). Runs go two at a time, one thread each (peers side by side
on this machine's two cores). Prints a Markdown table; writes the rows as JSON.

    python benchmarks/budget_schedule.py --budget 240 --datasets ethanol,acac --lrs 1e-3,3e-3 \
        --schedules exponential,exponential+cooldown,cosine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

SCHEDULES = ("exponential", "exponential+cooldown", "cosine", "plateau", "plateau+cooldown")
"""The paper's exponential as it was (no cooldown); the same, cooling down over the budget's last fifth (the
shipped default under a budget, ``training.cooldown: 0.2``); a cosine over the budget; ReduceLROnPlateau (factor
0.5, patience 10) as it was, and annealed over the budget's last fifth (the shipped default under a budget)."""
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def split(name: str):
    """(train, validation, test) molecules of ``name``."""
    import numpy as np

    from schnet_model import read_dataset

    if name == "ethanol":
        d = read_dataset(ROOT / "data" / "ethanol_gfn2xtb_500K.npz")
        idx = np.random.default_rng(0).permutation(len(d))
        return d.subset(idx[:800]), d.subset(idx[800:900]), d.subset(idx[900:1000])
    if name == "acac":
        sys.path.insert(0, str(HERE))
        from search_value import dataset

        files = dataset("acac")
        d = read_dataset(files["path"])
        idx = np.random.default_rng(0).permutation(len(d))
        return d.subset(idx[:320]), d.subset(idx[320:400]), read_dataset(files["test_path"])
    raise SystemExit(f"error: --datasets: unknown {name!r} (known: ethanol, acac)")


def one(name: str, scheduler: str, lr: float, budget: float, seed: int) -> dict:
    """Train the paper configuration for ``budget`` seconds; its test errors."""
    import numpy as np
    import torch

    from schnet_model import ModelConfig, SchNet, Trainer, TrainingConfig
    from schnet_model.training import predict

    torch.set_num_threads(1)
    train, val, test = split(name)
    torch.manual_seed(seed)
    model = SchNet(ModelConfig(n_atom_basis=64, n_filters=64, n_interactions=3))
    kind, _, cool = scheduler.partition("+")  # "exponential" (the paper's, no cooldown), "exponential+cooldown", …
    cfg = TrainingConfig(lr=lr, scheduler=kind, min_lr=lr / 100 if kind == "cosine" else 0.0,
                         cooldown=0.2 if cool else 0.0, max_epochs=100_000, max_time=budget,
                         early_stopping_patience=None, batch_size=32, num_threads=1, seed=seed)
    t = Trainer(model, train, val, cfg)
    r = t.fit()
    p = predict(t.model, test, forces=True)
    return {"dataset": name, "scheduler": scheduler, "lr": lr, "budget_s": budget, "seed": seed,
            "epochs": len(r.history), "last_lr": r.history[-1].lr, "best_epoch": r.best_epoch,
            "forces_mae": float(np.abs(p.forces - test.F).mean()),
            "energy_mae": float(np.abs(p.energy - test.E).mean()),
            "energy_unit": test.energy_unit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=240.0, help="seconds of training per model")
    ap.add_argument("--datasets", default="ethanol,acac")
    ap.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated initial learning rates")
    ap.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma-separated, of {', '.join(SCHEDULES)}; "
                    "run two at a time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"budget_schedule_{date.today()}.json")
    ap.add_argument("--one", nargs=4, metavar=("DATASET", "SCHEDULER", "LR", "BUDGET"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], float(a.one[2]), float(a.one[3]), a.seed)))
        return
    rows: list[dict] = []
    for name in a.datasets.split(","):
        split(name)  # its files made once, before two runs race to make them
        for lr in (float(x) for x in a.lrs.split(",")):
            schedules = a.schedules.split(",")
            for pair in (schedules[i:i + 2] for i in range(0, len(schedules), 2)):  # peers on the two cores
                procs = [subprocess.Popen([sys.executable, __file__, "--seed", str(a.seed), "--one", name, s,
                                           str(lr), str(a.budget)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
                         for s in pair]
                for p in procs:
                    out, _ = p.communicate()
                    if p.returncode != 0:
                        raise SystemExit(f"error: {name} lr {lr}: a run failed (exit {p.returncode})")
                    rows.append(json.loads(out.strip().splitlines()[-1]))
                a.out.write_text(json.dumps(rows, indent=1))
    print(f"\nthe paper configuration alone, {a.budget:.0f} s of training each, one thread, seed {a.seed}")
    print("| dataset | schedule | lr | epochs | last lr | force MAE | energy MAE |\n|---|---|---|---|---|---|---|")
    for r in rows:
        u = r["energy_unit"]
        print(f"| {r['dataset']} | {r['scheduler']} | {r['lr']:g} | {r['epochs']} | {r['last_lr']:.2g} | "
              f"{r['forces_mae']:.4g} {u}/Å | {r['energy_mae']:.4g} {u} |")


if __name__ == "__main__":
    main()
