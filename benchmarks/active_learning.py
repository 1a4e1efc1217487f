"""Active learning vs random selection at equal labels: force and energy MAE on a hotter test set, per round.

    python benchmarks/active_learning.py [--seeds 0 1 2 3 4 5] [--rounds 3] [--per-round 20] \
[--temperature 500 750 1000]

Start: the shipped ethanol GFN2-xTB data at 500 K (``data/ethanol_gfn2xtb_500K.npz``), a CV pool of
``--initial`` molecules. Test: an independent GFN2-xTB Langevin run at 1,000 K (``sweep data generate``,
seed 1; generated once into the work directory). Each seed runs two campaigns of ``sweep learn``
from the same starting molecules and the same round-0 models: (a) ``--strategy uncertainty``
(calibrated max per-atom force std, uncertainty-weighted k-means diversity, ``sweep learn``'s β) and
(b) ``--strategy random``, each exploring with its own ensemble's Langevin MD over a temperature ladder
(default 500, 750, 1,000 K shared out over the runs; ``--temperature 1000`` for the test's temperature
alone), stopped at 4 × the round's median force std, and labelling what it chose with GFN2-xTB. The table
reports the 1,000 K test MAE of every round's k-fold ensemble, mean ± std over seeds, side by side, and the
paired difference. Everything is a real ``sweep learn`` run (Ray, MLflow, xTB labels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = """name: al_bench
dataset:
  path: {data}
  n_train: {n_train}
  n_val: {n_val}
  split_seed: {seed}
  test_path: {{test_1000K: {test}}}
training:
  lr: 2.0e-3
  batch_size: 8
  scheduler: plateau
  max_epochs: {epochs}
  early_stopping_patience: {patience}
cv:
  k: {k}
  seed: {seed}
search:
  num_samples: 1
  max_concurrent: 1
  scheduler: none
resources:
  cpus_per_fold: {cpus}
"""


def test_set(work: Path, frames: int) -> Path:
    path = work / f"ethanol_gfn2xtb_1000K_{frames}.npz"
    if not path.is_file():
        from schnet_model.data.generate import generate_md, write_npz

        write_npz(generate_md("ethanol", frames, 1000.0, seed=1), path)
    return path


def campaign(work: Path, strategy: str, seed: int, a: argparse.Namespace, test: Path) -> dict:
    """One ``sweep learn`` run in its own directory and MLflow store; its campaign.json."""
    d = work / f"{strategy}-seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    n_val = a.initial // 3
    (d / "spec.yaml").write_text(SPEC.format(data=ROOT / "data" / "ethanol_gfn2xtb_500K.npz", n_train=a.initial - n_val,
                                             n_val=n_val, seed=seed, test=test, epochs=a.epochs, patience=a.patience,
                                             # a trial's folds fit on 2 cores
                                             k=a.k, cpus=round(min(0.6, 1.8 / a.k), 2)))
    done = [p for p in (d / "campaigns").glob("*/campaign.json") if json.loads(p.read_text())["status"] == "finished"]
    if done:  # a finished campaign of this work directory (an earlier, interrupted run of the benchmark): reuse it
        return json.loads(done[0].read_text())
    sweep = Path(sys.executable).parent / "sweep"
    cmd = [str(sweep), "learn", "spec.yaml", "--rounds", str(a.rounds), "--per-round", str(a.per_round),
           *[x for t in a.temperature for x in ("--temperature", f"{t:g}")], "--strategy", strategy,
           "--seed", str(seed), "--trajectories", str(a.trajectories), "--steps", str(a.steps),
           "--threshold", str(a.threshold),
           *(["--pool-factor", str(a.pool_factor)] if a.pool_factor is not None else [])]
    if (d / "campaigns").is_dir():
        cmd.append("--resume")
    t0 = time.time()
    with open(d / "learn.log", "a") as log:
        r = subprocess.run(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "160"})
    if r.returncode != 0:
        raise SystemExit(f"{strategy} seed {seed}: sweep learn exited {r.returncode}; see {d / 'learn.log'}")
    camp = json.loads(max((d / "campaigns").glob("*/campaign.json"), key=lambda p: p.stat().st_mtime).read_text())
    camp["wall_seconds"] = time.time() - t0
    return camp


def round_stats(d: Path) -> dict[int, dict[str, float]]:
    """Each round's MLflow metrics in campaign directory ``d``: the selection's statistics (candidates, runs stopped by
    the threshold, the threshold in eV/Å, median max force std of the candidates and of the chosen ones)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.learn.campaign import ROUND_TAG
    from orchestrator.tracking.store import ROLE

    client = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return {int(r.data.tags[ROUND_TAG]): r.data.metrics
            for r in client.search_runs(ids, filter_string=f"tags.`{ROLE}` = 'round'")}


def oracle(work: Path, seeds: list[int], rounds: int, arm: str = "uncertainty") -> list[dict]:
    """Does the uncertainty find the errors? For every selection round of the uncertainty campaigns: the same pool the
    round chose from (its saved ensemble and data, its seeds), every candidate labelled with GFN2-xTB, and each
    frame's force MAE (kcal/mol/Å): Spearman ρ(max force std, frame error) over the pool, and the mean frame error of
    the pool (= what random choice gets on average), of the 20 chosen, and of the 20 most uncertain."""
    from orchestrator.learn.campaign import LearnOptions, choose_round
    from schnet_model.calibration import spearman
    from schnet_model.data.generate import label_gfn2
    from schnet_model.ensemble import SchNetEnsemble
    from schnet_model.units import energy_factor

    to_kcal = energy_factor("eV", "kcal/mol")
    out = []
    for seed in seeds:
        root = next((work / f"{arm}-seed{seed}" / "campaigns").glob("*/campaign.json")).parent
        camp = json.loads((root / "campaign.json").read_text())
        opts = LearnOptions(**camp["options"])
        for r in range(rounds):
            ens = SchNetEnsemble.load(root / f"ensemble_r{r}")
            with np.load(root / f"data_r{r}.npz", allow_pickle=False) as d:
                R, z = d["R"], d["z"]
            sel = choose_round(ens, R, z, opts, r).selection  # the pool and the choice the round made
            frames = sel.scored.frames
            err = np.array([np.abs(sel.scored.forces[i] * to_kcal - label_gfn2(a.numbers, a.positions)[1]).mean()
                            for i, a in enumerate(frames)])  # [n] kcal/mol/Å
            top = np.argsort(-sel.scored.score)[: len(sel.idx)]
            out.append({"seed": seed, "round": r, "candidates": len(frames),
                        "candidates_logged": (camp["rounds"][r].get("selection") or {}).get("candidates"),
                        "spearman": spearman(sel.scored.score, err), "pool": float(err.mean()),
                        "chosen": float(err[sel.idx].mean()), "most_uncertain": float(err[top].mean())})
    print(f"\ndoes the uncertainty find the errors? every candidate of the {arm} campaigns' pools labelled "
          "(GFN2-xTB); mean per-frame force MAE in kcal/mol/Å, mean over seeds")
    print(f"{'round':>5} | {'candidates':>10} | {'ρ(σ, error)':>11} | {'pool (random)':>13} | {'chosen':>7} | "
          "most uncertain")
    for r in range(rounds):
        x = [o for o in out if o["round"] == r]
        m = {k: np.mean([o[k] for o in x]) for k in ("candidates", "spearman", "pool", "chosen", "most_uncertain")}
        print(f"{r:>5} | {m['candidates']:>10.0f} | {m['spearman']:>11.2f} | {m['pool']:>13.2f} | "
              f"{m['chosen']:>7.2f} | {m['most_uncertain']:.2f}")
    return out


def beyond_test(runs: dict[str, dict[int, dict]], test: Path) -> dict[str, dict[int, list[int]]]:
    """Labels spent on geometries the test never reaches: per arm, seed and round, how many of the molecules the round
    added have a reference energy above the highest energy of the 1,000 K test set (printed as totals over seeds)."""
    with np.load(test, allow_pickle=False) as t:
        top = float(t["E"].max())
    out: dict[str, dict[int, list[int]]] = {}
    for s, camps in runs.items():
        out[s] = {}
        for seed, c in camps.items():
            last = Path(c["rounds"][-1]["dataset"]["path"])
            with np.load(last, allow_pickle=False) as d:
                E, rnd = d["E"], d["round"]
            out[s][seed] = [int(((E > top) & (rnd == r)).sum()) for r in range(1, len(c["rounds"]))]
    print(f"\nlabels above the test set's highest energy ({top:.1f}), summed over seeds, per round added: " +
          " | ".join(f"{s}: {np.sum(list(v.values()), axis=0).tolist()}" for s, v in out.items()))
    return out


def retrain(work: Path, runs: dict[str, dict[int, dict]], training_seed: int) -> dict[str, dict[int, dict[str, float]]]:
    """Training noise at fixed data: every campaign's last dataset trained again exactly as its round was (same folds,
    same configuration) but with ``training.seed`` = ``training_seed``; the test MAE of each (kcal/mol, /Å)."""
    from rich.console import Console

    from orchestrator.learn.campaign import train_round
    from orchestrator.learn.dataset import Version
    from orchestrator.spec.sweep import load_sweep_spec

    out: dict[str, dict[int, dict[str, float]]] = {}
    quiet = Console(quiet=True)
    for s, camps in runs.items():
        out[s] = {}
        for seed, c in camps.items():
            d = work / f"{s}-seed{seed}"
            uri = f"sqlite:///{d / 'retrain.db'}"
            spec = load_sweep_spec(d / "spec.yaml", [f"training.seed={training_seed}", f"tracking.uri={uri}"])
            last = c["rounds"][-1]
            cwd = Path.cwd()
            os.chdir(d)  # the sweep's files next to the campaign's
            try:
                m = train_round(spec, Version(**last["dataset"]), f"retrain-r{last['round']}-t{training_seed}",
                                params=c["params"], uri=uri, console=quiet).metrics
            finally:
                os.chdir(cwd)
            out[s][seed] = {"forces_mae": m["test_1000K_forces_mae"], "energy_mae": m["test_1000K_energy_mae"]}
    print("\ntraining noise: the last round's data of every campaign trained again with "
          f"training.seed {training_seed}; test MAE, mean over seeds (as run → again)")
    for s, v in out.items():
        f0 = np.array([runs[s][k]["rounds"][-1]["metrics"]["test_1000K_forces_mae"] for k in v])
        f1 = np.array([x["forces_mae"] for x in v.values()])
        print(f"  {s}: forces {f0.mean():.3f} → {f1.mean():.3f}; "
              f"one training's std ≈ {np.sqrt(np.mean((f1 - f0) ** 2) / 2):.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--initial", type=int, default=60, help="starting molecules (500 K)")
    ap.add_argument("--k", type=int, default=3, help="folds = ensemble members")
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--patience", type=int, default=60)
    ap.add_argument("--temperature", type=float, nargs="+", default=[500.0, 750.0, 1000.0],
                    help="K, exploration MD; several: a ladder shared out over the runs (the pool then differs "
                    "from the 1,000 K test distribution)")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threshold", default="4x",
                    help="eV/Å, or a multiple of the median force std on the round's data (4x)")
    ap.add_argument("--strategy", default="uncertainty", choices=["uncertainty", "stochastic"],
                    help="the selection compared with random choice")
    ap.add_argument("--pool-factor", type=int, default=None,
                    help="the uncertainty selection clusters the pool-factor × "
                    "per-round most uncertain candidates (default: sweep learn's)")
    ap.add_argument("--retrain-seed", type=int, default=None, help="also train every campaign's last dataset again "
                    "with this training seed (the training noise at fixed data)")
    ap.add_argument("--test-frames", type=int, default=300)
    ap.add_argument("--work", type=Path, default=Path("al_bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="", help="results file active_learning_NAME_DATE.json (an experiment's name)")
    a = ap.parse_args()
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    test = test_set(a.work, a.test_frames)
    t0 = time.time()
    arm = a.strategy  # the selection compared with random choice
    runs: dict[str, dict[int, dict]] = {arm: {}, "random": {}}
    for seed in a.seeds:  # seed by seed: an interrupted run leaves paired campaigns (reused when run again)
        for s in runs:
            runs[s][seed] = campaign(a.work, s, seed, a, test)
    unit = runs[arm][a.seeds[0]]["rounds"][0]["dataset"]["energy_unit"]
    rows = []
    print(f"\nactive learning, ethanol GFN2-xTB: start {a.initial} molecules at 500 K, +{a.per_round} per round "
          f"(exploration MD at {', '.join(f'{t:g}' for t in a.temperature)} K), "
          f"test {a.test_frames} molecules at 1,000 K; "
          f"mean ± std over seeds {a.seeds}; {date.today()}, {platform.node()} ({os.cpu_count()} CPUs)")
    print(f"{'round':>5} {'labels':>6} | {'forces MAE ' + arm:>23} {'random':>17} | {'energy MAE ' + arm:>23} "
          f"{'random':>17} | {arm} better (forces) | Δ forces ± s.e. (paired)")
    for r in range(a.rounds + 1):
        row = {"round": r}
        for s, camps in runs.items():
            f = np.array([c["rounds"][r]["metrics"]["test_1000K_forces_mae"] for c in camps.values()])
            e = np.array([c["rounds"][r]["metrics"]["test_1000K_energy_mae"] for c in camps.values()])
            row[s] = {"forces_mae": f.tolist(), "energy_mae": e.tolist(),
                      "n_molecules": runs[s][a.seeds[0]]["rounds"][r]["dataset"]["n_molecules"]}
        fu, fr = np.array(row[arm]["forces_mae"]), np.array(row["random"]["forces_mae"])
        eu, er = np.array(row[arm]["energy_mae"]), np.array(row["random"]["energy_mae"])
        wins = int((fu < fr).sum())
        diff = fu - fr  # [seeds] paired by seed: same starting molecules and round-0 models
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan
        row["forces_mae_difference"] = {"mean": float(diff.mean()), "standard_error": float(se)}
        print(f"{r:>5} {row[arm]['n_molecules']:>6} | {fu.mean():>13.3f} ± {fu.std():.3f} {fr.mean():>9.3f} ± "
              f"{fr.std():.3f} | {eu.mean():>13.3f} ± {eu.std():.3f} {er.mean():>9.3f} ± {er.std():.3f} | "
              f"{'–' if np.array_equal(fu, fr) else f'{wins}/{len(fu)} seeds'} | "
              f"{'–' if np.array_equal(fu, fr) else f'{diff.mean():+.3f} ± {se:.3f}'}")
        rows.append(row)
    print(f"(forces in {unit}/Å, energies in {unit}; total {time.time() - t0:.0f} s)")
    stats = {s: {seed: round_stats(a.work / f"{s}-seed{seed}") for seed in a.seeds} for s in runs}
    print("\nwhat each round chose from, mean over seeds: candidates (exploration runs stopped of "
          f"{a.trajectories}), threshold (eV/Å), median max force std of the chosen ÷ of the candidates; "
          "Spearman ρ(σ, |error|) of the test forces")
    for r in range(a.rounds + 1):
        cells = []
        for s in runs:
            m = [stats[s][seed].get(r, {}) for seed in a.seeds]
            rho = np.mean([x.get("test_1000K_forces_spearman_calibrated", np.nan) for x in m])
            if r < a.rounds:
                mean = {k: np.mean([x.get(k, np.nan) for x in m]) for k in
                        ("candidates", "trajectories_stopped", "threshold_eV_per_A")}
                ratio = np.mean([x.get("selected_forces_std_max_median", np.nan)
                                 / x.get("candidates_forces_std_max_median", np.nan) for x in m])
                cells.append(f"{s}: {mean['candidates']:.0f} ({mean['trajectories_stopped']:.1f} stopped), "
                             f"{mean['threshold_eV_per_A']:.2f}, ×{ratio:.2f}, ρ {rho:.2f}")
            else:
                cells.append(f"{s}: ρ {rho:.2f}")
        print(f"{r:>5} | " + " | ".join(cells))
    if len(a.temperature) > 1:
        print("\nwhere each arm's labels came from: chosen ÷ candidates per exploration temperature, summed over seeds "
              "and rounds 0–" + str(a.rounds - 1))
        for s in runs:
            cells = []
            for t in a.temperature:
                n_sel = sum(stats[s][seed].get(r, {}).get(f"selected_{t:g}K", 0)
                            for seed in a.seeds for r in range(a.rounds))
                n_cand = sum(stats[s][seed].get(r, {}).get(f"candidates_{t:g}K", 0)
                             for seed in a.seeds for r in range(a.rounds))
                cells.append(f"{t:g} K {n_sel:.0f} / {n_cand:.0f}")
            print(f"  {s}: " + ", ".join(cells))
    hot = beyond_test(runs, test)
    again = retrain(a.work, runs, a.retrain_seed) if a.retrain_seed is not None else None
    found = oracle(a.work, a.seeds, a.rounds, arm)
    a.out.mkdir(parents=True, exist_ok=True)
    res = a.out / f"active_learning_{a.name + '_' if a.name else ''}{date.today()}.json"
    res.write_text(json.dumps({"date": str(date.today()), "machine": platform.node(), "cpus": os.cpu_count(),
                               "args": {k: str(v) for k, v in vars(a).items()}, "unit": unit, "rounds": rows,
                               "round_metrics": {s: {seed: [stats[s][seed].get(r["round"], r.get("metrics", {}))
                                                             for r in c["rounds"]] for seed, c in camps.items()}
                                                 for s, camps in runs.items()},
                               "labels_above_test_max_energy": hot, "retrained": again, "oracle": found,
                               "seconds": time.time() - t0}, indent=2))
    print(f"results: {res}")


if __name__ == "__main__":
    main()
