"""`sweep slurm`: the batch script, its options' errors, and a real Slurm (tests/slurm_cluster.py) running a sweep that
is stopped by scancel mid-sweep and continued by a second job to a finished sweep with its fold models and ensemble."""

from __future__ import annotations

import json
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import epochs_logged, sweep_cli, write_sweep_spec
from slurm_cluster import slurm  # noqa: F401 (the fixture)

from orchestrator.cluster.slurm import MARGIN_SECONDS, parse_duration, slurm_budget

sweep = partial(sweep_cli, timeout=120)  # sweep ARGS, cwd=…: the CLI in its own process

def test_slurm_durations():
    assert parse_duration("1-02:00:30") == 93630.0 and parse_duration("2:03:04") == 7384.0
    assert parse_duration("05:00") == 300.0 and parse_duration("7") == 420.0 and parse_duration("2-5") == 190800.0
    assert parse_duration("UNLIMITED") is None
    with pytest.raises(ValueError, match="expected a Slurm time"):
        parse_duration("1h")
    assert slurm_budget({}) is None  # outside a job: the spec's own budget (none: no limit)


def test_the_batch_script_starts_ray_on_the_allocation_runs_resumes_and_stops(tmp_path):
    spec = write_sweep_spec(tmp_path / "s.yaml", {"name": "t"})
    r = sweep("slurm", str(spec), "--nodes", "3", "--gpus-per-node", "4", "--cpus-per-node", "32",
              "--time", "1-00:00:00", "--partition", "gpu", "--account", "chem", "--requeue", "--name", "t-one",
              "--set", "cv.k=3", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = r.stdout
    for line in ("#SBATCH --nodes=3", "#SBATCH --cpus-per-task=32", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=1-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=chem", "#SBATCH --requeue",
                 "#SBATCH --signal=B:TERM@300",
                 f"#SBATCH --output={tmp_path}/sweeps/slurm/%x-%j.out"):
        assert line in s.splitlines(), line
    assert "export RAY_AUTH_MODE=token" in s and "ray stop" not in s  # never stop another job's Ray on a shared node
    assert "--temp-dir=/tmp/ray-$SLURM_JOB_ID" in s and "port=$(( 20000 + (SLURM_JOB_ID % 400) * 100 ))" in s
    assert f"args=(run {spec} --name t-one --set cv.k=3 --address \"$head_ip:$port\")" in s
    assert f"if [ -f {tmp_path}/sweeps/t-one/sweep.json ]; then args+=(--resume); fi" in s
    assert f'"${{sweep[@]}}" ensemble t-one --tracking-uri sqlite:///{tmp_path}/mlflow.db' in s
    assert not (tmp_path / "sweeps").exists()  # a dry run writes nothing
    syntax = subprocess.run(["bash", "-n"], input=s, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize("args, expected", [
    (["--time", "3 hours"], "--time: expected a time limit, [D-]HH:MM:SS (got '3 hours')"),
    (["--nodes", "0"], "--nodes: Input should be greater than or equal to 1"),
    (["--cpus-per-node", "0"], "--cpus-per-node: Input should be greater than or equal to 1 (got 0)"),
    (["--partition", "gpu; rm -rf ~"], "expected a Slurm name"),
    (["--name", "../x"], "--name ../x: expected a sweep's name, without path separators"),
    (["--resume"], "no unfinished sweep named t-* under"),
])
def test_slurm_option_errors_are_one_line(tmp_path, args, expected):
    spec = write_sweep_spec(tmp_path / "s.yaml", {"name": "t"})
    r = sweep("slurm", str(spec), *args, "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "sweeps").exists()


def _runs(db: Path) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id], max_results=1000)]


@pytest.mark.integration
def test_a_sweep_on_slurm_is_preempted_by_scancel_and_a_second_job_finishes_it(slurm, tmp_path):  # noqa: F811
    spec = write_sweep_spec(tmp_path / "s.yaml", {
        "name": "t", "dataset": {"n_train": 30, "n_val": 10, "n_test": 16},
        "training": {"max_epochs": 30, "batch_size": 20, "lr": 1.0e-3, "early_stopping_patience": None},
        "search": {"num_samples": 2, "max_concurrent": 1, "scheduler": "none", "checkpoint_every": 2, "plan": "off"},
        "resources": {"cpus_per_fold": 0.5}})
    env = slurm.env
    first = sweep("slurm", str(spec), "--cpus-per-node", "2", "--time", "00:30:00", "--signal-lead", "60",
                  "--name", "t-slurm", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    job = first.stdout.split("submitted job ")[1].split(":")[0]
    log = tmp_path / "sweeps" / "slurm" / f"sweep-t-slurm-{job}.out"
    assert f"tail -f {log}" in " ".join(first.stdout.split())
    db = tmp_path / "mlflow.db"
    deadline = time.time() + 240
    while epochs_logged(db) < 3 and time.time() < deadline and slurm.job_state(job) in ("PENDING", "RUNNING"):
        time.sleep(1.0)
    text = log.read_text() if log.exists() else ""
    assert epochs_logged(db) >= 3, f"{slurm.job_state(job)}\n{text[-4000:]}"
    # the job's time limit is the sweep's budget (its time left, less the margin for the ensemble)
    budget = float(text.split("time budget: ")[1].split(" s")[0])
    assert 1800 - MARGIN_SECONDS - 120 < budget <= 1800 - MARGIN_SECONDS, text[-3000:]

    assert slurm.run("scancel", job).returncode == 0  # what preemption does: SIGTERM to every process of the job
    assert slurm.wait_for(job, ("CANCELLED", "COMPLETED", "FAILED"), 120) == "CANCELLED"
    time.sleep(2.0)
    text = log.read_text()
    state = json.loads((tmp_path / "sweeps" / "t-slurm" / "sweep.json").read_text())
    assert state["status"] == "interrupted", text[-4000:]
    runs = _runs(db)
    assert not [r for r in runs if r.info.status == "RUNNING"], text[-4000:]
    # recorded at the SIGTERM itself: the job's Ray may be gone before Tune has stopped, and KillWait ends the rest
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert [t.data.tags.get("sweep.status") for t in trials] == ["interrupted"]

    second = sweep("slurm", str(spec), "--cpus-per-node", "2", "--time", "00:30:00", "--resume", cwd=tmp_path, env=env)
    assert second.returncode == 0 and "sweep t-slurm" in second.stdout, second.stdout + second.stderr
    job2 = second.stdout.split("submitted job ")[1].split(":")[0]
    state2 = slurm.wait_for(job2, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 420)
    log2 = tmp_path / "sweeps" / "slurm" / f"sweep-t-slurm-{job2}.out"
    text2 = log2.read_text()
    assert state2 == "COMPLETED", text2[-4000:]
    assert "ensemble of the best trial: sweep ensemble t-slurm" in text2 and "champion" in text2, text2[-4000:]
    runs = _runs(db)
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert all(t.info.status == "FINISHED" and t.data.tags["sweep.status"] == "completed" for t in trials)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    folds = [r for r in runs if r.data.tags.get("sweep.role") == "fold"]
    assert len(folds) == 4 and all(any(a.path == "model" for a in client.list_artifacts(f.info.run_id)) for f in folds)
    steps = {m.step for t in trials for m in client.get_metric_history(t.info.run_id, "val_loss_mean")}
    assert steps == set(range(1, 31))  # the interrupted trial went on from its checkpoint, no epoch lost or repeated
