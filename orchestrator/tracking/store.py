"""The MLflow store of the run tree: tags, the client, runs found by tags (no Ray here).

Read by ``sweep status``, ``sweep list`` and ``sweep ensemble`` and written by the sweep driver
(:mod:`orchestrator.tracking.callback`); this module imports neither Ray nor Tune, so the read-only
commands start without them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.spec.uri import sqlite_path
from orchestrator.tracking.keys import (  # noqa: F401  (re-exported: the run tree's tags)
    EXPERIMENT_KIND,
    EXPERIMENT_TAGS,
    FOLD,
    NODE,
    NODES,
    NOTE,
    PARENT,
    ROLE,
    SWEEP_ID,
    TRIAL_ID,
)


def ui_link(uri: str, experiment_id: str) -> str:
    """How to open an experiment's runs table in the MLflow UI.

    MLflow 3's UI opens every experiment on its GenAI view unless the URL (or the sidebar's
    toggle, remembered by the browser) asks for the model-training view.
    """
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StoreNotFoundError(LookupError):
    """A read-only command named a SQLite tracking store that does not exist, or a tracking URI that no store
    answers (an unknown scheme, a server that does not answer within :data:`REACH_SECONDS`)."""


SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "postgres", "mysql", "mssql", "databricks")
REACH_SECONDS = 5.0  # how long a tracking server may take to answer before a command gives up (MLflow retries ~minutes)


def check_uri(uri: str) -> None:
    """One line, in seconds, instead of MLflow's exception or its minutes of retries: an unknown scheme, or an HTTP
    tracking server that does not answer."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if "://" in uri and scheme not in SCHEMES:
        raise StoreNotFoundError(f"tracking URI {uri}: unknown scheme {scheme!r} "
                                 "(expected sqlite:///FILE, http(s)://HOST, "
                                 "postgresql://…, file:///DIR or a directory)")
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACH_SECONDS).close()
        except urllib.error.HTTPError:
            return  # something answers: MLflow's own errors are clearer from here
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StoreNotFoundError(f"tracking URI {uri}: no MLflow server answers there within {REACH_SECONDS:g} s "
                                     f"({reason}); start it (sweep mlflow-server) "
                                     "or pass another --tracking-uri") from None


@contextlib.contextmanager
def no_artifact_progress_bar() -> Iterator[None]:
    """MLflow draws a progress bar for each artifact transfer unless ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is
    false (read at each transfer; MLflow has no other switch): false inside the block, as it was after."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def open_client(uri: str, *, read_only: bool = False, registry: bool = False):
    """An ``MlflowClient`` for ``uri`` without MLflow's schema-creation chatter on stderr.

    Args:
        uri: tracking URI (``sqlite:///…``, ``http://…``, a path).
        read_only: refuse a ``sqlite:///`` file that does not exist instead of creating an empty
            store (``sweep ensemble``/``status``/``list`` must not leave files behind).
        registry: also use ``uri`` as the model-registry URI.
    """
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # schema creation/migration chatter on a new SQLite store
        logging.getLogger(name).setLevel(logging.WARNING)
    check_uri(uri)
    path = sqlite_path(uri)
    if read_only and path is not None:
        if not path.exists():
            raise StoreNotFoundError(f"no MLflow store at {path} (tracking URI {uri}); "
                                     "run a sweep first or pass --tracking-uri")
    return MlflowClient(tracking_uri=uri, registry_uri=uri) if registry else MlflowClient(tracking_uri=uri)


def run_exists(uri: str, run_id: str) -> bool:
    """Whether the MLflow store at ``uri`` holds run ``run_id`` (a SQLite store that does not exist is not created)."""
    from mlflow.exceptions import MlflowException

    try:
        open_client(uri, read_only=True).get_run(run_id)
    except (StoreNotFoundError, MlflowException):
        return False
    return True


class Store:
    """Thin helper over ``MlflowClient`` for the run tree."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.client = open_client(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        if exp is not None and exp.tags.get(EXPERIMENT_KIND[0]) is None:
            self.client.set_experiment_tag(self.exp_id, *EXPERIMENT_KIND)

    def find(self, **tags: str) -> list:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.exp_id], filter_string=flt, max_results=10_000)

    def find_or_create(self, name: str, tags: dict[str, str]) -> str:
        key = {k: v for k, v in tags.items() if k in (ROLE, SWEEP_ID, TRIAL_ID, FOLD)}
        runs = self.find(**key)
        if runs:
            return runs[0].info.run_id
        return self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id

    def log(self, run_id: str, metrics: dict[str, float], step: int | None = None,
            params: dict[str, Any] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
              if isinstance(v, int | float) and not isinstance(v, bool)]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        for i in range(0, max(len(ms), 1), 900):
            self.client.log_batch(run_id, metrics=ms[i : i + 900], params=ps if i == 0 else [])

    def end(self, run_id: str, status: str) -> None:
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status=status)
