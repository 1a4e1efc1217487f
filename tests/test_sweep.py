"""`sweep run` on a real local Ray cluster with a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART_DATA, epochs_logged, sweep_cli, write_sweep_spec

pytestmark = pytest.mark.integration


def spec_file(tmp_path: Path, **over) -> Path:
    return write_sweep_spec(tmp_path / "spec.yaml", {
        "name": "t",
        "dataset": {"n_train": 30, "n_val": 10, "n_test": 16},
        "training": {"max_epochs": 3, "batch_size": 20, "lr": {"loguniform": [1.0e-4, 1.0e-3]}},
        "search": {"num_samples": 3, "max_concurrent": 2, "scheduler": "none", "checkpoint_every": 1, "max_failures": 1,
                   "initial_points": [{"training.lr": 1.0e12}, {"training.lr": 1.0e-3}]},
        "resources": {"cpus_per_fold": 0.4},
    }, **over)


sweep = partial(sweep_cli, timeout=500)  # sweep ARGS, cwd=…: the CLI in its own process

def runs(db: Path) -> list[dict]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    out = []
    for exp in c.search_experiments():
        for r in c.search_runs([exp.experiment_id], max_results=10_000):
            out.append({"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "metrics": r.data.metrics,
                        "params": r.data.params, "artifacts": [a.path for a in c.list_artifacts(r.info.run_id)]})
    return out


@pytest.mark.parametrize("layout", ["folds", "stacked"])
def test_sweep_run_tree_statuses_artifacts_and_nan_trial(tmp_path, layout):
    r = sweep("run", str(spec_file(tmp_path, resources={"cpus_per_fold": 0.4, "layout": layout})), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "top trials" in r.stdout and "completed" in r.stdout
    assert f"trial layout: {layout}" in r.stdout
    assert "Token authentication" not in r.stdout + r.stderr  # Ray's notices stay out of the user's terminal
    all_runs = runs(tmp_path / "mlflow.db")
    roles = {role: [x for x in all_runs if x["tags"].get("sweep.role") == role] for role in ("sweep", "trial", "fold")}
    assert len(roles["sweep"]) == 1 and len(roles["trial"]) == 3 and len(roles["fold"]) == 6
    assert not [x for x in all_runs if x["status"] == "RUNNING"]
    parent = roles["sweep"][0]
    assert parent["status"] == "FINISHED" and {"spec.json", "split.json"} <= set(parent["artifacts"])
    assert len(parent["tags"]["sweep.dataset_sha256"]) == 64 and "sweep.git_commit" in parent["tags"]
    failed = [t for t in roles["trial"] if t["status"] == "FAILED"]
    assert len(failed) == 1, [t["status"] for t in roles["trial"]]  # the lr = 1e12 trial diverged
    assert "non-finite" in failed[0]["tags"]["sweep.error"] and "fold" in failed[0]["tags"]["sweep.error"]
    done = [t for t in roles["trial"] if t["status"] == "FINISHED"]
    assert len(done) == 2
    if layout == "stacked":  # the trial says how its step ran, in MLflow and at the end of the run
        assert all("2 members stacked on cpu" in t["tags"]["sweep.step_mode"] for t in done)
        assert "stacked step: 2 members stacked on cpu, windowed filters, forces explicit: eager (not CUDA)" in r.stdout
    for t in done:
        assert {"predictions.npz", "trial.json", "plots"} <= set(t["artifacts"])
        assert t["metrics"]["test_ensemble_forces_mae"] > 0 and np.isfinite(t["metrics"]["val_loss_std"])
        folds = [f for f in roles["fold"] if f["tags"]["mlflow.parentRunId"] == t["id"]]
        assert len(folds) == 2 and all("model" in f["artifacts"] for f in folds)
        assert all(f["status"] == "FINISHED" and f["metrics"]["test_forces_mae"] > 0 for f in folds)
        for f in folds:  # the energy references were refit on each fold's training residuals, kept only if better
            m = f["metrics"]
            kept = m["offset_refit/kept"] == 1.0
            assert (m["offset_refit/val_energy_mae_after"] < m["offset_refit/val_energy_mae_before"]) == kept
    # the split manifest: every fold's validation (and training) indices avoid the test set
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # MLflow as a user sees it
    assert client.get_experiment_by_name("t").tags["mlflow.experimentKind"] == "custom_model_development"
    sweep_run = client.get_run(parent["id"])
    note = sweep_run.data.tags["mlflow.note.content"]
    assert note.startswith("Best trial") and "forces MAE" in note and "sweep ensemble t-" in note
    (ds_input,) = sweep_run.inputs.dataset_inputs
    profile = json.loads(ds_input.dataset.profile)
    assert ds_input.dataset.name == "ethanol_gfn2xtb_500K.npz" and profile["energy_unit"] == "kcal/mol"
    assert profile["length_unit"] == "Å" and profile["test"] == 16 and (
        parent["tags"]["sweep.dataset_sha256"].startswith(ds_input.dataset.digest))

    local = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
        parent["id"], "split.json", str(tmp_path))
    split = json.loads(Path(local).read_text())
    test = set(split["test"])
    assert len(test) == 16 and len(split["folds"]) == 2
    for f in split["folds"]:
        assert not test & set(f["val"]) and not test & set(f["train"])
    # fold models load back and predict
    from schnet_model import load_model

    fold_run = next(f for f in roles["fold"] if f["status"] == "FINISHED")
    model_dir = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
        fold_run["id"], "model", str(tmp_path / "dl"))
    model, info = load_model(model_dir)
    assert info.energy_unit == "kcal/mol" and model.config.n_filters == 8
    # status and list read the store
    s = sweep("status", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert s.returncode == 0 and "completed" in s.stdout and "failed" in s.stdout
    s = sweep("list", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert s.returncode == 0 and "t-" in s.stdout and "FINISHED" in s.stdout


def test_eight_concurrent_trials_on_one_sqlite_store(tmp_path):
    p = spec_file(tmp_path, search={"num_samples": 8, "max_concurrent": 8, "scheduler": "none", "checkpoint_every": 1},
                  resources={"cpus_per_fold": 0.1}, training__max_epochs=2)
    r = sweep("run", str(p), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "database is locked" not in r.stdout + r.stderr
    trials = [x for x in runs(tmp_path / "mlflow.db") if x["tags"].get("sweep.role") == "trial"]
    assert len(trials) == 8 and all(t["status"] == "FINISHED" for t in trials)


def _finished_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute(
                "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                "where t.key = 'sweep.role' and t.value = 'trial' and r.status = 'FINISHED'").fetchone()
        return rows[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("layout", ["folds", "stacked"])
def test_resume_after_the_driver_is_killed(tmp_path, layout):
    p = spec_file(tmp_path, search={"num_samples": 3, "max_concurrent": 1, "scheduler": "none", "checkpoint_every": 2},
                  training__max_epochs=12, resources={"cpus_per_fold": 0.4, "layout": layout})
    log = open(tmp_path / "first_run.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(p)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while _finished_trials(tmp_path / "mlflow.db") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(1)  # into the next trial (two more trials of 12 epochs remain: the sweep is far from done)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    assert alive, "the sweep ended before it could be killed:\n" + (tmp_path / "first_run.log").read_text()[-3000:]
    # orphaned raylets
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    before = {t["tags"]["sweep.trial_id"]: t for t in runs(tmp_path / "mlflow.db")
              if t["tags"].get("sweep.role") == "trial"}
    finished_before = [k for k, t in before.items() if t["status"] == "FINISHED"]
    assert finished_before
    r = sweep("run", str(p), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    all_runs = runs(tmp_path / "mlflow.db")
    trials = [t for t in all_runs if t["tags"].get("sweep.role") == "trial"]
    # a trial started after Tune's last experiment-state save (periodic) before the kill is not in
    # the restored state: its run is marked lost and the searcher samples a replacement
    lost = [t for t in trials if t["tags"].get("sweep.status") == "lost"]
    assert all(t["status"] == "KILLED" and "--resume the searcher sampled a replacement" in t["tags"]["sweep.error"]
               for t in lost)
    assert len(lost) <= 1 and all(t["tags"]["sweep.trial_id"] not in finished_before for t in lost)
    trials = [t for t in trials if t not in lost]
    ids = [t["tags"]["sweep.trial_id"] for t in trials]
    assert len(ids) == len(set(ids)) == 3  # one MLflow run per Tune trial, no duplicates
    assert not [x for x in all_runs if x["status"] == "RUNNING"]
    assert all(t["status"] == "FINISHED" for t in trials)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in trials:
        steps = sorted(m.step for m in c.get_metric_history(t["id"], "val_loss_mean"))
        if t["tags"]["sweep.trial_id"] in finished_before:
            assert steps == list(range(1, 13)), steps  # completed before the kill: not re-run
        else:
            assert set(steps) == set(range(1, 13))
            # the interrupted trial restarts from a checkpoint boundary (checkpoint_every=2), or from scratch when
            # Tune's last experiment-state save predates its first checkpoint: the epochs it
            # repeats are one contiguous run starting right after a checkpoint
            redone = sorted({e for e in steps if steps.count(e) > 1})
            assert all(steps.count(e) <= 2 for e in steps), steps
            if redone:
                assert redone == list(range(redone[0], redone[-1] + 1)) and (redone[0] - 1) % 2 == 0, steps
    assert len([x for x in all_runs if x["tags"].get("sweep.role") == "sweep"]) == 1


def test_a_checkpoint_the_last_snapshot_names_but_tune_deleted_is_restored_from_a_later_one(tmp_path):
    """Tune deletes a trial's oldest checkpoint in the step that forces the next snapshot: a driver killed in
    between leaves a snapshot naming deleted checkpoints (seen in CI: the trial then failed on --resume)."""
    from orchestrator.search.storage import repair_checkpoints

    exp = tmp_path / "t-1"
    trial = exp / "run_trial_be8d537c_3_training_lr=0.0005"
    for i, epoch in ((2, 6), (3, 8)):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        (trial / f"checkpoint_00000{i}" / "state.json").write_text(json.dumps({"epoch": epoch}))
    # as pickled
    manager = b"".join(b"\x8c\xa5" + str(trial / f"checkpoint_00000{i}").encode() + b"\x94" for i in (0, 1))
    inner = json.dumps({"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": manager.hex()}})
    (exp / "experiment_state-2026-11-30_17-25-25.json").write_text(json.dumps({"trial_data": [["{}", inner]]}))
    repaired = repair_checkpoints(str(exp))
    assert repaired == [str(trial / "checkpoint_000000"), str(trial / "checkpoint_000001")]
    assert json.loads((trial / "checkpoint_000001" / "state.json").read_text()) == {"epoch": 6}  # not the newest
    assert json.loads((trial / "checkpoint_000003" / "state.json").read_text()) == {"epoch": 8}  # untouched
    assert repair_checkpoints(str(exp)) == [] and repair_checkpoints("s3://bucket/sweeps/t-1") == []


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"cv": {"k": 1}}, "cv.k: Input should be greater than or equal to 2"),
        ({"training__lr": {"loguniform": [-1.0, 1.0e-3]}}, "training.lr: loguniform bounds must be positive"),
        ({"training__lr": {"loguniform": [1.0e-2, 1.0e-3]}}, "low < high"),
        ({"model__n_interactions": {"int": [0, 3]}}, "model.n_interactions: search value 0"),
        ({"training__epochs": 3}, "training.epochs: unknown key"),
        ({"search": {"num_samples": 0}}, "search.num_samples: Input should be greater than or equal to 1"),
        ({"resources": {"layout": "stacked", "gpus_per_fold": 0.5}},
         "gpus_per_fold is for layout: folds; a stacked trial asks for gpus_per_trial"),
        ({"resources": {"layout": "tiled"}}, "resources.layout: Input should be 'auto', 'stacked' or 'folds'"),
    ],
)
def test_spec_errors_start_nothing(tmp_path, over, expected):
    r = sweep("run", str(spec_file(tmp_path, **over)), cwd=tmp_path, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("layout", ["folds", "stacked"])
def test_a_trial_that_cannot_fit_this_machine_is_refused_before_anything_starts(tmp_path, layout):
    cpus = os.cpu_count() or 1
    res = ({"layout": layout, "cpus_per_fold": float(cpus)} if layout == "folds"
           else {"layout": layout, "cpus_per_trial": cpus + 1.0})
    r = sweep("run", str(spec_file(tmp_path, resources=res)), cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    need = f"{2 * cpus + 0.01:g}" if layout == "folds" else f"{cpus + 1:g}"
    assert (len(lines) == 1 and f"one trial asks for {need} CPU" in lines[0]
            and f"this machine has {cpus} CPU" in lines[0]), r.stderr
    fix = f"--set resources.cpus_per_fold={int((cpus - 0.01) / 2 * 100) / 100:g}" if layout == "folds" else \
        f"--set resources.cpus_per_trial={cpus}"
    assert lines[0].endswith(fix), lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweeps").exists()


def test_asha_grace_period_longer_than_the_trials_is_clamped_with_a_note(tmp_path):
    p = spec_file(tmp_path, search={"num_samples": 1, "max_concurrent": 1, "scheduler": {"asha": {"grace_period": 5}},
                                    "initial_points": [{"training.lr": 1.0e-3}]}, training__max_epochs=2)
    r = sweep("run", str(p), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "note: search.scheduler.asha.grace_period=5 exceeds the trials' 2 epochs; using 2" in r.stdout
    assert "completed" in r.stdout


@pytest.mark.parametrize("key", ["gpus_per_fold", "gpus_per_trial"])
def test_gpus_without_a_gpu(tmp_path, key):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = sweep("run", str(spec_file(tmp_path, resources={key: 0.5})), cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and f"{key}=0.5 but this machine has no GPU" in r.stderr
    assert not (tmp_path / "sweeps").exists()


def test_a_trial_the_time_budget_ends_keeps_its_best_fold_states_and_the_sweep_has_a_best_trial(tmp_path):
    """search.plan: off (ASHA/FIFO alone): the trial the budget ends finalises its best fold states before Tune's
    limit (fold models saved and evaluated, status "stopped by budget"), so the sweep ends with a best trial instead
    of "no trial completed" and 20 s of training thrown away."""
    p = spec_file(tmp_path, search={"num_samples": 2, "max_concurrent": 1, "scheduler": "none", "time_budget": 20,
                                    "plan": "off", "initial_points": [{"training.lr": 1.0e-3}]},
                  training__max_epochs=100000, training__early_stopping_patience=None)
    r = sweep("run", str(p), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stopped by budget" in r.stdout and "pruned" not in r.stdout.split("top trials")[-1]
    all_runs = runs(tmp_path / "mlflow.db")
    trials = [t for t in all_runs if t["tags"].get("sweep.role") == "trial"]
    assert {t["tags"]["sweep.status"] for t in trials} <= {"stopped by budget", "not started", "cut by budget"}
    kept = [t for t in trials if t["tags"]["sweep.status"] == "stopped by budget"]
    assert kept and all(k["status"] == "FINISHED" and "predictions.npz" in k["artifacts"] for k in kept)
    for k in kept:
        assert k["metrics"]["test_ensemble_forces_mae"] > 0
        folds = [f for f in all_runs if f["tags"].get("mlflow.parentRunId") == k["id"]]
        assert len(folds) == 2 and all("model" in f["artifacts"] and f["metrics"]["test_forces_mae"] > 0 for f in folds)
    # the first trial (lr 1e-3) trained until the budget's end: the paper's exponential cooled down over its last
    # fifth (without the cooldown it ends at ≈ lr)
    first = next(k for k in kept if float(k["params"]["training.lr"]) == pytest.approx(1e-3))
    folds = [f for f in all_runs if f["tags"].get("mlflow.parentRunId") == first["id"]]
    assert all(f["metrics"]["lr"] < 0.2e-3 for f in folds), [f["metrics"]["lr"] for f in folds]
    sweep_run = next(x for x in all_runs if x["tags"].get("sweep.role") == "sweep")
    assert sweep_run["tags"]["sweep.best_trial_run_id"] in {k["id"] for k in kept}
    s = sweep("status", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert s.returncode == 0 and "stopped by budget" in s.stdout


@pytest.mark.slow
def test_a_trial_with_a_large_test_file_keeps_back_its_finalisation_not_one_epoch(tmp_path):
    """The 21-atom failure at small scale: a test file 150 times a fold's validation set (20,000 molecules, PaiNN),
    so predicting it at the end costs about 25 s, many epochs. The clock kept one epoch back; the trial was still
    predicting when Tune's limit (budget + 10 s) killed it, and the sweep ended with "no trial completed". The trial
    now keeps back its own estimate of the finalisation (from its validation time) and ends with its results inside
    the budget."""
    src = QUICKSTART_DATA
    with np.load(src) as d:
        arrays = {k: d[k] for k in d.files}
    big = tmp_path / "test20000.npz"  # the shipped frames 20 times over: what matters is the count
    np.savez(big, **{k: (np.concatenate([v] * 20) if k in ("R", "E", "F") else v) for k, v in arrays.items()})
    budget = 60.0
    data = {"path": str(src), "n_train": 128, "n_val": 128, "n_test": None, "test_path": str(big)}
    p = spec_file(tmp_path, dataset=data,
                  model={"family": "painn", "n_atom_basis": 64, "n_interactions": 3, "shared_filters": True},
                  search={"num_samples": 1, "max_concurrent": 1, "scheduler": "none", "time_budget": budget,
                          "plan": "off", "initial_points": [{"training.lr": 1.0e-3}]},
                  training__batch_size=8, training__max_epochs=100000, training__early_stopping_patience=None,
                  resources="auto")
    t0 = time.time()
    r = sweep("run", str(p), cwd=tmp_path, timeout=400)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (trial,) = [t for t in runs(tmp_path / "mlflow.db") if t["tags"].get("sweep.role") == "trial"]
    assert trial["tags"]["sweep.status"] == "stopped by budget" and trial["metrics"]["test_ensemble_forces_mae"] > 0
    assert wall < budget + 45, wall  # the budget, Ray's start-up and the CLI's imports


@pytest.mark.parametrize("baseline", ["final"])  # screen (the default): test_budget.py's costly-space test
def test_a_budget_plan_screens_on_one_fold_then_trains_the_best_configurations_with_all_folds(tmp_path, baseline):
    """search.plan: auto: the plan is printed from a measured epoch; screening trials train fold 0 alone; the final
    rung trains the best screened configurations (baseline: final — and the paper configuration) with all k folds;
    the sweep ends within its budget (plus start-up) with a best trial that has k fold models, and reports the paper
    configuration next to it (at full fidelity, or its screening when it was not promoted)."""
    p = spec_file(tmp_path, search={"num_samples": 12, "max_concurrent": 2, "scheduler": {"asha": {"grace_period": 3}},
                                    "time_budget": 60, "initial_points": [{"training.lr": 1.0e-3}],
                                    "baseline": baseline},
                  training__max_epochs=40, training__early_stopping_patience=None)
    t0 = time.time()
    r = sweep("run", str(p), cwd=tmp_path, timeout=400)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "budget plan for" in out and "rung 1, screen:" in out
    assert ("rung 2, final: the paper configuration" in out) == (baseline == "final")
    assert "paper configuration" in out.split("top trials")[-1] and "best trial" in out
    all_runs = runs(tmp_path / "mlflow.db")
    trials = [t for t in all_runs if t["tags"].get("sweep.role") == "trial"]
    folds_of = {t["id"]: [f for f in all_runs if f["tags"].get("mlflow.parentRunId") == t["id"]] for t in trials}
    screened = [t for t in trials if t["tags"].get("sweep.status") == "screened"]
    final = [t for t in trials if t["tags"].get("sweep.status") in ("completed", "stopped by budget")]
    assert len(screened) >= 2 and all(len(folds_of[t["id"]]) == 1 for t in screened)
    assert len(final) >= (2 if baseline == "final" else 1) and all(len(folds_of[t["id"]]) == 2 for t in final)
    assert all("model" in f["artifacts"] for t in final for f in folds_of[t["id"]])
    sweep_run = next(x for x in all_runs if x["tags"].get("sweep.role") == "sweep")
    assert sweep_run["tags"]["sweep.best_trial_run_id"] in {t["id"] for t in final}
    base = next(t for t in trials if t["id"] == sweep_run["tags"]["sweep.baseline_trial_id"] or
                t["tags"].get("sweep.trial_id") == sweep_run["tags"]["sweep.baseline_trial_id"])
    assert float(base["params"]["training.lr"]) == 1.0e-3  # the paper configuration's trial
    fidelity = sweep_run["tags"]["sweep.baseline_fidelity"]
    assert fidelity == ("final" if base in final else "screen") and (baseline == "screen" or fidelity == "final")
    if fidelity == "screen":
        assert "not promoted" in out
    else:
        assert sweep_run["metrics"]["baseline_test_forces_mae"] > 0
    assert wall < 60 + 90, wall  # the budget, plus Ray's start-up and the driver's own work (2-core CI machine)


def test_a_finished_sweep_is_extended_without_rerunning_its_trials(tmp_path):
    p = spec_file(tmp_path, search={"num_samples": 2, "max_concurrent": 1, "scheduler": "none", "seed": 3,
                                    "initial_points": [{"training.lr": 1.0e-3}]}, training__max_epochs=2)
    r = sweep("run", str(p), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = {t["tags"]["sweep.trial_id"]: t for t in runs(tmp_path / "mlflow.db")
             if t["tags"].get("sweep.role") == "trial"}
    r = sweep("run", str(p), "--resume", "--more", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "the searcher knows the 2 earlier trials' results" in r.stdout
    all_runs = runs(tmp_path / "mlflow.db")
    sweeps = [x for x in all_runs if x["tags"].get("sweep.role") == "sweep"]
    trials = {t["tags"]["sweep.trial_id"]: t for t in all_runs if t["tags"].get("sweep.role") == "trial"}
    assert len(sweeps) == 1 and sweeps[0]["status"] == "FINISHED"  # the same sweep run
    assert len(trials) == 4 and set(first) < set(trials) and all(t["status"] == "FINISHED" for t in trials.values())
    parents = {t["tags"]["mlflow.parentRunId"] for t in trials.values()}
    assert parents == {sweeps[0]["id"]}
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for tid in first:  # not re-run: still one value per epoch
        assert sorted(m.step for m in c.get_metric_history(trials[tid]["id"], "val_loss_mean")) == [1, 2]
    lrs = [float(c.get_run(t["id"]).data.params["training.lr"]) for t in trials.values()]
    assert len(set(lrs)) == 4  # the paper point was not enqueued again
    table = r.stdout.split("top trials")[-1]
    assert sum(tid[:8] in table for tid in trials) == 4  # the table lists the earlier trials too
    r = sweep("run", str(p), "--resume", cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "finished: add trials with --more N" in r.stderr


def test_a_sweep_with_only_a_separate_test_file_reports_it_and_becomes_an_ensemble(tmp_path):
    """The official test file kept apart (no molecule held out of the dataset): every trial, the sweep run and the
    ensemble report it by name; the ensemble calibrates its stds from the out-of-fold errors and the file's inputs."""
    from test_heldout import write_extxyz

    write_extxyz(tmp_path / "train.xyz", range(0, 40), unit="kcal/mol")  # the whole file is the CV pool
    write_extxyz(tmp_path / "test_1200K.xyz", range(990, 1000), unit="eV")
    p = spec_file(tmp_path, dataset={"path": str(tmp_path / "train.xyz"), "energy_unit": "kcal/mol", "n_train": 30,
                                     "n_val": 10, "test_path": {"test_1200K": "test_1200K.xyz"}},
                  search={"num_samples": 1, "max_concurrent": 1, "scheduler": "none",
                          "initial_points": [{"training.lr": 1.0e-3}]}, training__max_epochs=2)
    r = sweep("run", str(p), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test sets: test_1200K 10 molecules (file test_1200K.xyz)" in r.stdout
    assert "test_1200K E MAE [kcal/mol]" in r.stdout and "test_1200K F MAE [kcal/mol/Å]" in r.stdout
    all_runs = runs(tmp_path / "mlflow.db")
    (trial,) = [t for t in all_runs if t["tags"].get("sweep.role") == "trial"]
    (parent,) = [t for t in all_runs if t["tags"].get("sweep.role") == "sweep"]
    folds = [t for t in all_runs if t["tags"].get("sweep.role") == "fold"]
    assert trial["metrics"]["test_1200K_ensemble_forces_mae"] > 0 and "test_ensemble_forces_mae" not in trial["metrics"]
    assert all(f["metrics"]["test_1200K_forces_mae"] > 0 for f in folds)
    assert parent["metrics"]["best_test_1200K_forces_mae"] == trial["metrics"]["test_1200K_ensemble_forces_mae"]
    assert parent["metrics"]["n_test_test_1200K"] == 10
    r = sweep("ensemble", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--evaluate",
              str(tmp_path / "test_1200K.xyz"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())  # Rich wraps long titles
    assert "test file test_1200K (10 molecules), 2-member ensemble" in out
    assert ("from the out-of-fold errors of 40 pool molecules and the ensemble variance on the inputs of "
            "test_1200K") in out
    assert "test_1200K.xyz: calibration report" in out and "coverage ±2σ" in out
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(parent["id"]).data.metrics
    assert np.isfinite(metrics["ensemble_test_1200K_forces_nll_calibrated"]) and metrics["ensemble_forces_scale"] > 0
    cal = json.loads(Path(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
        parent["id"], "ensemble_calibration.json", str(tmp_path))).read_text())["calibration"]["details"]
    # the out-of-fold predictions the folds stored are used (checked on a sample), not predicted again
    assert cal["oof_source"].startswith("stored by the sweep") and cal["oof_energy_max_abs_diff_vs_sweep"] < 1e-2
    for cmd in ("status", "list"):  # one-row summaries say which test set their MAEs are of
        s = sweep(cmd, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
        assert s.returncode == 0 and "(test_1200K)" in s.stdout, s.stdout + s.stderr


def test_ctrl_c_ends_a_sweep_as_interrupted_and_resume_finishes_it(tmp_path):
    p = spec_file(tmp_path, search={"num_samples": 2, "max_concurrent": 1, "scheduler": "none", "checkpoint_every": 2,
                                    "initial_points": [{"training.lr": 1.0e-3}]}, training__max_epochs=40,
                  training__early_stopping_patience=None)
    log = open(tmp_path / "first_run.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(p)], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    deadline = time.time() + 300
    while epochs_logged(tmp_path / "mlflow.db") < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert proc.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
    rc = proc.wait(timeout=120)
    log.close()
    out = (tmp_path / "first_run.log").read_text()
    assert rc == 130, out[-3000:]
    assert "interrupted; continue it with: sweep run" in out and out.rstrip().endswith("--resume")
    assert "Tuner.restore" not in out and "Stop signal received" not in out  # Tune's API is not our user's
    table = out.split("top trials")[-1]
    assert "interrupted" in table and "pruned" not in table and "completed" not in table
    all_runs = runs(tmp_path / "mlflow.db")
    assert not [x for x in all_runs if x["status"] == "RUNNING"]
    (parent,) = [x for x in all_runs if x["tags"].get("sweep.role") == "sweep"]
    (trial,) = [x for x in all_runs if x["tags"].get("sweep.role") == "trial"]
    assert (parent["status"] == "KILLED" and trial["status"] == "KILLED"
            and trial["tags"]["sweep.status"] == "interrupted")
    r = sweep("run", str(p), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    all_runs = runs(tmp_path / "mlflow.db")
    trials = [x for x in all_runs if x["tags"].get("sweep.role") == "trial"]
    (parent,) = [x for x in all_runs if x["tags"].get("sweep.role") == "sweep"]
    assert parent["status"] == "FINISHED" and len(trials) == 2
    assert all(t["status"] == "FINISHED" and t["tags"]["sweep.status"] == "completed" for t in trials)
    first = next(t for t in trials if t["id"] == trial["id"])  # the interrupted trial went on in its own run
    from mlflow.tracking import MlflowClient

    steps = [m.step for m in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
             .get_metric_history(first["id"], "val_loss_mean")]
    assert set(steps) == set(range(1, 41)), steps


def test_resources_auto_shares_this_machine_so_a_five_fold_spec_runs_anywhere(tmp_path):
    """What every shipped spec asks (`resources: auto`, k = 5, 2 concurrent trials) runs on this machine as it is."""
    cpus = os.cpu_count() or 1
    p = spec_file(tmp_path, resources="auto", cv={"k": 5}, search={"num_samples": 2, "max_concurrent": 2,
                                                                  "scheduler": "none"}, training__max_epochs=1)
    r = sweep("run", str(p), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    per_fold = (cpus - 0.02) / 10
    expect = (f"{int(per_fold * 100) / 100:g} CPU per fold actor" if per_fold >= 0.5
              else f"{max(int(cpus / 2 * 100) / 100, 0.01):g} CPU per trial, its 5 folds stacked in one process")
    assert f"resources auto: this machine's {cpus:g} CPU shared by 2 concurrent trials × 5 folds: {expect}" in r.stdout
    trials = [t for t in runs(tmp_path / "mlflow.db") if t["tags"].get("sweep.role") == "trial"]
    assert len(trials) == 2 and all(t["status"] == "FINISHED" for t in trials)
