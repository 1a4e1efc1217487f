"""The MLflow UI as a user sees a sweep: headless Chromium against a real `mlflow ui` (skipped without Chromium)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART_DATA

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_link_sweep_run_prints_opens_the_runs_table_with_the_dataset(tmp_path):
    from orchestrator.search.record import log_dataset
    from orchestrator.tracking.store import NOTE, Store, ui_link
    from schnet_model.data.load import read_dataset
    from schnet_model.data.splits import SplitManifest, kfold
    from schnet_model.files import sha256 as checksum

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(uri, "ui-check")
    run_id = store.client.create_run(store.exp_id, run_name="ui-check-sweep", tags={NOTE: "Best trial abc"}).info.run_id
    data = read_dataset(QUICKSTART_DATA)
    manifest = SplitManifest(dataset=str(QUICKSTART_DATA), dataset_sha256=checksum(QUICKSTART_DATA), seed=0,
                             test=np.arange(10), folds=kfold(np.arange(10, 40), 2, 0), official_test=False)
    log_dataset(store, run_id, data, manifest)
    store.end(run_id, "FINISHED")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        link = ui_link(uri, store.exp_id).split("then ")[-1].replace("127.0.0.1:5000", f"127.0.0.1:{port}")
        profile = ["--user-data-dir=" + str(tmp_path / "profile")]
        dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--virtual-time-budget=15000", "--dump-dom", link],
                             capture_output=True, text=True, timeout=120).stdout
        subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1500,1000", "--virtual-time-budget=15000",
                        f"--screenshot={tmp_path / 'runs.png'}", link], capture_output=True, timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)
    assert "ui-check-sweep" in dom and "ethanol_gfn2xtb_500K.npz" in dom, dom[-2000:]  # the runs table, dataset column
    assert Path(tmp_path / "runs.png").stat().st_size > 10_000
