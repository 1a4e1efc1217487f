"""A sweep with 4 concurrent trials tracked by `mlflow server` on a real PostgreSQL backend store.

Skipped, with the reason, when PostgreSQL is not installed or cannot start here (`.ci/run` installs
Debian's `postgresql` when it can).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import write_sweep_spec
from ray_nodes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    try:
        import psycopg2  # noqa: F401
    except ImportError as e:
        pytest.skip(f"psycopg2 is not installed ({e}): pip install -e '.[dev]'")
    from orchestrator.cluster.mlflow_server import MlflowServer, PostgresUnavailable, pg_bin

    try:
        pg_bin("initdb")
        pg_bin("pg_ctl")
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))  # reachable by the postgres user when we are root
    srv = MlflowServer(root, port=free_port(), pg_port=free_port())
    t0 = time.time()
    try:
        srv.start()
    except PostgresUnavailable as e:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL cannot run here: {e}")
    print(f"\nPostgreSQL + mlflow server up in {time.time() - t0:.1f} s at {srv.uri}")
    yield srv
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_four_concurrent_trials_tracked_through_a_postgres_mlflow_server(tmp_path, server):
    write_sweep_spec(tmp_path / "spec.yaml", {
        "name": "pg",
        "dataset": {"n_train": 30, "n_val": 10, "n_test": 10},
        "training": {"max_epochs": 1, "batch_size": 10, "lr": {"loguniform": [1.0e-4, 1.0e-3]}},
        "search": {"num_samples": 4, "max_concurrent": 4, "scheduler": "none", "checkpoint_every": 1},
        "resources": {"cpus_per_fold": 0.2},
        "tracking": {"uri": server.uri},
        "storage": f"file://{tmp_path / 'tune'}",  # a URI, as s3://BUCKET/sweeps on a cluster
    })
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "spec.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=500)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"\n4-trial sweep against {server.uri} (PostgreSQL): {wall:.1f} s wall")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # nothing written locally
    assert len(list((tmp_path / "tune").glob("pg-*/run_trial_*/checkpoint_*"))) >= 4  # Tune wrote to the URI
    assert list((tmp_path / "sweeps").glob("pg-*/sweep.json"))  # the sweep's own record stays with the driver

    from mlflow.tracking import MlflowClient

    c = MlflowClient(server.uri)
    exp = c.get_experiment_by_name("pg")
    all_runs = c.search_runs([exp.experiment_id], max_results=1000)
    roles = {role: [x for x in all_runs if x.data.tags.get("sweep.role") == role]
             for role in ("sweep", "trial", "fold")}
    assert len(roles["sweep"]) == 1 and len(roles["trial"]) == 4 and len(roles["fold"]) == 8
    assert all(x.info.status == "FINISHED" for x in all_runs)
    parent = roles["sweep"][0].info.run_id
    # best checkpoint read back
    assert {a.path for a in c.list_artifacts(parent, "plots")} >= {"plots/parity_energy.png"}
    assert all(t.data.tags["mlflow.parentRunId"] == parent for t in roles["trial"])
    trial_ids = {t.info.run_id for t in roles["trial"]}
    assert all(f.data.tags["mlflow.parentRunId"] in trial_ids for f in roles["fold"])
    # artifacts live in the server's store and come back through the server
    fold = roles["fold"][0]
    assert fold.info.artifact_uri.startswith("mlflow-artifacts:/")
    local = c.download_artifacts(fold.info.run_id, "model", str(tmp_path / "dl"))
    from schnet_model import load_model

    model, info = load_model(local)
    assert model.config.n_filters == 8 and info.energy_unit == "kcal/mol"
    assert list((server.root / "artifacts").rglob("weights.safetensors"))
    # the runs are rows of the PostgreSQL database behind the server
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow",
                          passfile=str(server.postgres.passfile)) as con, con.cursor() as cur:
        cur.execute("select count(*) from runs where experiment_id = %s and status = 'FINISHED'", (exp.experiment_id,))
        assert cur.fetchone()[0] == 13
