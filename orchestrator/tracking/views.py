"""``sweep status`` and ``sweep list``: read the MLflow run tree."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestrator.spec.sweep import TrackingConfig
from orchestrator.tracking import keys
from orchestrator.tracking.store import PARENT, ROLE, SWEEP_ID, open_client


def _fmt(m: dict[str, float], key: str) -> str:
    return f"{m[key]:.4g}" if key in m else "–"


def _named(test_set: str, value: str) -> str:
    """A value of a test set other than ``test`` says which: ``0.51 (test_1200K)``."""
    return value if test_set == "test" or value == "–" else f"{value} ({test_set})"


def _client(uri: str | None):
    return open_client(TrackingConfig(uri=uri).resolved_uri(), read_only=True)


def _sweeps(client) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return []
    return client.search_runs(exps, filter_string=f"tags.`{ROLE}` = 'sweep'", order_by=["attributes.start_time DESC"])


def show_list(uri: str | None, console: Console) -> None:
    client = _client(uri)
    t = Table(title="sweeps")
    for c in ("name", "status", "trials", "best CV val loss", "best test E MAE", "best test F MAE", "run id"):
        t.add_column(c)
    for run in _sweeps(client):
        name = run.data.tags.get(SWEEP_ID, "?")
        n = len(client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT}` = '{run.info.run_id}'"))
        m = run.data.metrics
        ts = keys.headline_set(m, best=True) or "test"
        t.add_row(name, run.info.status, str(n), _fmt(m, "best_val_loss_mean"),
                  _named(ts, _fmt(m, keys.best_mae(ts, "energy"))),
                  _named(ts, _fmt(m, keys.best_mae(ts, "forces"))), run.info.run_id)
    console.print(t)


def show_status(name: str | None, uri: str | None, console: Console) -> None:
    client = _client(uri)
    sweeps = _sweeps(client)
    if name:
        sweeps = [r for r in sweeps if r.data.tags.get(SWEEP_ID) == name or r.data.tags.get(keys.SPEC_NAME) == name]
    if not sweeps:
        raise LookupError(f"no sweep {'named ' + repr(name) + ' ' if name else ''}"
                          f"in {TrackingConfig(uri=uri).resolved_uri()}")
    sweep = sweeps[0]
    trials = client.search_runs([sweep.info.experiment_id], filter_string=f"tags.`{PARENT}` = '{sweep.info.run_id}'")
    t = Table(title=f"{sweep.data.tags.get(SWEEP_ID)} ({sweep.info.status})")
    for c in ("trial", "status", "epochs", "val loss mean", "val loss std", "test E MAE", "test F MAE", "error"):
        t.add_column(c)
    for r in sorted(trials, key=lambda r: r.data.metrics.get("best_val_loss_mean",
                                                             r.data.metrics.get("val_loss_mean", 1e300))):
        m = r.data.metrics
        epochs = client.get_metric_history(r.info.run_id, "val_loss_mean")
        t.add_row(r.data.tags.get(keys.TRIAL_ID, "?"), r.data.tags.get(keys.STATUS, r.info.status.lower()),
                  str(max((h.step for h in epochs), default=0)), _fmt(m, "val_loss_mean"), _fmt(m, "val_loss_std"),
                  *(_named(ts, _fmt(m, keys.ensemble_mae(ts, p)))
                    for ts in [keys.headline_set(m) or "test"] for p in keys.PROPS),
                  r.data.tags.get(keys.ERROR, "")[:60])
    console.print(t)
