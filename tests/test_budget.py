"""A time-budgeted `sweep run` (search.plan: auto) on a real local Ray cluster with a real SQLite MLflow store:
configurations screened at equal compute within the screening rung's share, a Tune failure ending in one line with
every run ended and the sweep resumable, and `--resume` of a plan whose driver was killed in either rung."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_sweep import runs, spec_file, sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAPER = {"model.n_interactions": 1, "model.n_filters": 8, "model.n_atom_basis": 8, "training.batch_size": 20,
         "training.lr": 1.0e-3}


def costly_space(tmp_path: Path, budget: float, patience: int | None = None, **over) -> Path:
    """The issue's case at small scale: a space whose costliest configurations (4 interactions × 64 filters × 64 atom
    basis at batch 4) cost many times the paper configuration's epoch (1 × 8 × 8 at batch 20)."""
    return spec_file(tmp_path, dataset__n_train=160, dataset__n_val=40,
                     model={"n_interactions": {"int": [1, 4]}, "n_filters": {"choice": [8, 64]},
                                      "n_atom_basis": {"choice": [8, 64]}, "rbf_max": 6.0},
                     training={"batch_size": {"choice": [4, 20]}, "lr": {"loguniform": [3.0e-4, 3.0e-3]},
                               "scheduler": "cosine", "min_lr": 1.0e-6, "max_epochs": 400,
                               "early_stopping_patience": patience},
                     search={"num_samples": 30, "max_concurrent": 2, "scheduler": {"asha": {"grace_period": 15}},
                             "time_budget": budget, "initial_points": [PAPER], "checkpoint_every": 2, **over},
                     resources="auto")


def sweep_json(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "sweeps").glob("t-*/sweep.json")
    return json.loads(path.read_text())


def test_a_costly_space_is_screened_at_equal_compute_within_its_share_and_the_sweep_ends_with_an_ensemble(tmp_path):
    """Issue 25's crash at small scale: the plan priced every configuration at the paper configuration's epoch, the
    screening rung overran its share, a trial found no time to start and returned without a result, and Tune's
    metric check ended the sweep with a traceback. Now every screened configuration trains for the same seconds
    (a costly one for fewer epochs), none starts past the rung's last start, the cost model's estimate sits beside
    each measured epoch, and the sweep ends within its budget + 60 s with a best trial that becomes an ensemble."""
    budget = 60.0
    second = {"model.n_interactions": 2, "model.n_filters": 64, "model.n_atom_basis": 8, "training.batch_size": 20,
              "training.lr": 2.0e-3}  # every start point is screened, not only the first (the paper configuration)
    # patience: past screening's few epochs; the final rung trains on regardless
    p = costly_space(tmp_path, budget, patience=3, initial_points=[PAPER, second])
    t0 = time.time()
    r = sweep("run", str(p), cwd=tmp_path, timeout=400)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    assert "Traceback" not in r.stdout + r.stderr and "failed" not in out.split("top trials")[-1]
    assert "s of training each (equal compute" in out and "the costliest, 4×64×64, batch 4" in out
    assert "cost model:" in out and "ranked by the validation loss each reached in the same seconds of screening" in out
    assert wall < budget + 60, wall
    meta = sweep_json(tmp_path)
    plan, rungs, costs = meta["plan"], meta["rungs"], meta["screened_costs"]
    assert rungs["screen"]["measured_s"] <= 1.1 * rungs["screen"]["planned_s"] + 15  # its share, not the final's
    all_runs = runs(tmp_path / "mlflow.db")
    assert not [x for x in all_runs if x["status"] == "RUNNING"]
    trials = {t["tags"]["sweep.trial_id"]: t for t in all_runs if t["tags"].get("sweep.role") == "trial"}
    screened = [t for t in trials.values() if t["tags"]["sweep.status"] == "screened"]
    assert len(screened) >= 3 and len(costs) == len(screened)
    for point in (PAPER, second):
        assert any(all(float(t["params"][key]) == value for key, value in point.items()) for t in screened), point
    for row in costs:  # equal compute: each trained its allotment, to the nearest epoch
        assert (abs(row["epochs"] * row["measured_epoch_s"] - plan["screen_each"])
                <= max(1.0, row["measured_epoch_s"])), row
        assert row["estimated_epoch_s"] > 0 and row["predicted_val_loss"] is not None
        t = trials[row["trial_id"]]["metrics"]
        assert t["epoch_seconds_estimated"] == pytest.approx(row["estimated_epoch_s"]) and t["screen_score"] > 0
    cheap, dear = min(costs, key=lambda c: c["measured_epoch_s"]), max(costs, key=lambda c: c["measured_epoch_s"])
    if dear["measured_epoch_s"] > 3 * cheap["measured_epoch_s"] and plan["screen_each"] > 2 * cheap["measured_epoch_s"]:
        assert dear["epochs"] < cheap["epochs"]  # (what the sampler drew decides the spread)
    # the cost model priced the costly ones as costly: its estimates rank the configurations as their epochs did
    est, got = [c["estimated_epoch_s"] for c in costs], [c["measured_epoch_s"] for c in costs]
    assert np.corrcoef(np.argsort(np.argsort(est)), np.argsort(np.argsort(got)))[0, 1] > 0.5
    sweep_run = next(x for x in all_runs if x["tags"].get("sweep.role") == "sweep")
    assert sweep_run["status"] == "FINISHED" and sweep_run["metrics"]["screen_planned_seconds"] > 0
    assert sweep_run["metrics"]["final_measured_seconds"] > 0 and "cost_model_median_error" in sweep_run["metrics"]
    best = next(t for t in all_runs if t["id"] == sweep_run["tags"]["sweep.best_trial_run_id"])
    assert best["tags"]["sweep.status"] == "stopped by budget"  # not by early stopping: the final rung's time is used
    # search.baseline: screen (the default): the paper configuration (the first start point) is screened like any
    # other, and reported beside the best at the fidelity it reached (test_sweep's budget-plan test: baseline final)
    tag = sweep_run["tags"]["sweep.baseline_trial_id"]
    base = next(t for t in all_runs if t["tags"].get("sweep.role") == "trial"
                and (t["id"] == tag or t["tags"].get("sweep.trial_id") == tag))
    assert all(float(base["params"][key]) == value for key, value in PAPER.items()), base["params"]
    fidelity = sweep_run["tags"]["sweep.baseline_fidelity"]
    assert fidelity == ("screen" if base["tags"]["sweep.status"] == "screened" else "final"), fidelity
    assert "paper configuration" in out.split("top trials")[-1] and (fidelity == "final" or "not promoted" in out)
    # the cosine decayed over what the budget gave the final rung, not over max_epochs (400): it ends near min_lr
    lr = float(best["params"]["training.lr"])
    folds = [x for x in all_runs if x["tags"].get("mlflow.parentRunId") == best["id"]]
    assert len(folds) == 2 and all(f["metrics"]["lr"] < 0.2 * lr for f in folds), (lr, [f["metrics"] for f in folds])
    # the training share counts every trial of this run, the screened ones too (each at its own CPUs)
    trained = 0.0
    for res in (tmp_path / "sweeps").glob("t-*/run_trial_*/result.json"):
        last = [x for x in map(json.loads, res.read_text().splitlines()) if "train_seconds" in x]
        trained += last[-1]["train_seconds"] * last[-1]["cpus"] if last else 0.0
    share = re.search(r"time in training epochs: (\d+) CPU-s of", out)
    assert share and abs(int(share.group(1)) - trained) <= 2, (share and share.group(0), trained)
    e = sweep("ensemble", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert e.returncode == 0 and "2-member ensemble" in " ".join(e.stdout.split()), e.stdout[-3000:] + e.stderr[-3000:]


FAULT = textwrap.dedent('''
    """`sweep run` whose trials report without the metric Tune was told to expect: Tune's strict metric check then
    raises inside Tuner.fit (the failure issue 25 met); everything else is the real command."""
    import sys

    from ray import tune

    import orchestrator.search.phases as phases
    from orchestrator.cli import main


    def run_trial(config, ctx):  # the real trainable's name: --resume restores with the real one
        tune.report({"epoch": 1})


    def trainable(self, phase):
        return tune.with_parameters(run_trial, ctx={})


    phases.PhaseRunner.trainable = trainable
    sys.argv = ["sweep", "run", sys.argv[1]]
    main()
''')


def test_a_tune_failure_ends_every_run_in_one_line_and_the_sweep_resumes(tmp_path):
    p = spec_file(tmp_path, search={"num_samples": 2, "max_concurrent": 1, "scheduler": "none",
                                    "initial_points": [{"training.lr": 1.0e-3}]}, training__max_epochs=3)
    (tmp_path / "fault.py").write_text(FAULT)
    r = subprocess.run([sys.executable, str(tmp_path / "fault.py"), str(p)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "stopped: Ray Tune failed (ValueError: Trial returned a result which did not include" in err[0]
    assert err[0].endswith("continue it with --resume")
    all_runs = runs(tmp_path / "mlflow.db")
    assert all_runs and not [x for x in all_runs if x["status"] == "RUNNING"]
    assert {x["status"] for x in all_runs if x["tags"].get("sweep.role") in ("sweep", "trial")} == {"KILLED"}
    assert sweep_json(tmp_path)["status"] == "interrupted"
    r = sweep("run", str(p), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    all_runs = runs(tmp_path / "mlflow.db")
    assert not [x for x in all_runs if x["status"] == "RUNNING"]
    parent = next(x for x in all_runs if x["tags"].get("sweep.role") == "sweep")
    assert parent["status"] == "FINISHED" and parent["tags"].get("sweep.best_trial_run_id")


def _screened(db: Path) -> int:
    """Trial runs the driver has tagged screened (read-only: the driver is writing)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "select count(*) from tags where key = 'sweep.status' and value = 'screened'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _in_rung(tmp_path: Path, rung: str, proc: subprocess.Popen, deadline: float) -> bool:
    """Wait until the planned sweep is in ``rung`` (screen: a configuration screened, more to come; final: the final
    rung's trial has checkpointed)."""
    while time.time() < deadline and proc.poll() is None:
        if rung == "screen" and _screened(tmp_path / "mlflow.db") >= 1:
            return True
        if rung == "final" and any((tmp_path / "sweeps").glob("t-*-final/*/checkpoint_000000")):
            return True
        time.sleep(0.3)
    return False


@pytest.mark.parametrize("rung", ["screen", "final"])
def test_resume_of_a_planned_sweep_whose_driver_was_killed_mid_plan(tmp_path, rung):
    """Issue 25, point 5: the driver killed (SIGKILL, no chance to save) in the screening rung or in the final rung;
    `--resume` continues the plan where it was — the screening goes on (its screened trials are not screened again)
    then the final rung, or the final rung goes on from its trial's checkpoint — and ends with a best trial whose
    fold models make an ensemble, every MLflow run ended, one run per trial."""
    p = costly_space(tmp_path, 45.0)
    log = open(tmp_path / "first_run.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(p)], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    reached = _in_rung(tmp_path, rung, proc, time.time() + 300)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    assert reached and alive, (tmp_path / "first_run.log").read_text()[-3000:]
    # orphaned raylets
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    before = {x["tags"]["sweep.trial_id"] for x in runs(tmp_path / "mlflow.db")
              if x["tags"].get("sweep.role") == "trial" and x["tags"].get("sweep.status") == "screened"}
    r = sweep("run", str(p), "--resume", cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "budget plan for" in r.stdout and "final rung:" in r.stdout
    all_runs = runs(tmp_path / "mlflow.db")
    assert not [x for x in all_runs if x["status"] == "RUNNING"]
    trials = [x for x in all_runs if x["tags"].get("sweep.role") == "trial" and x["tags"].get("sweep.status") != "lost"]
    ids = [t["tags"]["sweep.trial_id"] for t in trials]
    assert len(ids) == len(set(ids))  # one MLflow run per Tune trial
    screened = {t["tags"]["sweep.trial_id"] for t in trials if t["tags"]["sweep.status"] == "screened"}
    assert before <= screened  # what was screened before the kill is kept, not screened again
    meta = sweep_json(tmp_path)
    assert meta["status"] == "finished" and len(meta["tune_experiments"]) == 2 and meta["screened_costs"]
    parent = next(x for x in all_runs if x["tags"].get("sweep.role") == "sweep")
    assert parent["status"] == "FINISHED"
    best = next(t for t in all_runs if t["id"] == parent["tags"]["sweep.best_trial_run_id"])
    folds = [f for f in all_runs if f["tags"].get("mlflow.parentRunId") == best["id"]]
    assert len(folds) == 2 and all("model" in f["artifacts"] for f in folds)
    e = sweep("ensemble", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert e.returncode == 0, e.stdout[-3000:] + e.stderr[-3000:]
