"""The ``sweep select`` command: candidates (a file, or the ensemble's own MD), the chosen molecules, their MLflow
record."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from orchestrator.learn.select import (
    POOL_FACTOR,
    STRATEGIES,
    SelectError,
    kelvin,
    parse_temperatures,
    parse_threshold,
    read_candidates,
    select,
    threshold_eV,
    write_selection,
)


def run_select(source: str | None, candidates: Path | None, explore_from: Path | None, *, n: int, strategy: str,
               temperature: float | list[float], trajectories: int, steps: int, threshold: str | float, every: int,
               seed: int, out: Path, tracking_uri: str | None, console: Console, max_std: float | None = None,
               pool_factor: int | None = None) -> list:
    """Select ``n`` molecules; write them to ``out``; log the choice under the ensemble's sweep run when it has one."""
    from orchestrator.ensemble.assemble import resolve
    from orchestrator.spec.sweep import TrackingConfig
    from orchestrator.tracking.store import PARENT, ROLE, Store, no_artifact_progress_bar, run_exists

    if strategy not in STRATEGIES:
        raise SelectError(f"--strategy: {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    temperature = parse_temperatures(temperature)
    parse_threshold(threshold)
    pool_factor = POOL_FACTOR if pool_factor is None else pool_factor
    frames = read_candidates(candidates or explore_from)  # read before anything is loaded: a bad file fails at once
    uri = TrackingConfig(uri=tracking_uri).resolved_uri()
    with no_artifact_progress_bar():
        loaded = resolve(source, uri, console=console)
    ens = loaded.ensemble
    what = f"{len(frames)} frames of {candidates}"
    if explore_from is not None:
        from schnet_model.explore import explore

        rng = np.random.default_rng(seed)
        starts = [frames[i] for i in rng.choice(len(frames), trajectories, replace=len(frames) < trajectories)]
        threshold = threshold_eV(threshold, ens, frames)  # eV/Å (relative: to the median over the start file)
        trajs = explore(ens, starts, temperature, steps, threshold, seed=seed, every=every)
        frames = [f for t in trajs for f in t.frames]
        stopped = sum(t.stopped_at is not None for t in trajs)
        what = (f"{len(frames)} frames of {len(trajs)} MD runs at {kelvin(temperature)} from {explore_from} "
                f"({stopped} stopped by the {threshold:.3g} eV/Å threshold)")
    sel = select(ens, frames, n, strategy, seed=seed,  # type: ignore[arg-type]
                 max_score=max_std if max_std is not None else (threshold if explore_from is not None else None),
                 pool_factor=pool_factor)
    chosen, stats = sel.chosen, sel.stats()
    write_selection(chosen, out)
    console.print(f"ensemble: {loaded.description}; candidates: {what}; max per-atom force std (calibrated) median "
                  f"{stats['candidates_forces_std_max_median']:.3f} eV/Å, "
                  f"of the {len(chosen)} selected ({strategy}) median "
                  f"{stats['selected_forces_std_max_median']:.3f} eV/Å → {out} (predictions and stds in eV, eV/Å)",
                  soft_wrap=True)
    sweep_run = ens.meta.get("sweep_run_id")
    if sweep_run and not run_exists(uri, sweep_run):  # a directory saved from another store: no dangling child run
        console.print(f"not logged in MLflow (the ensemble's sweep run {sweep_run} is not in {uri}); label them with: "
                      f"sweep data generate --relabel {out} -o labelled.npz", soft_wrap=True)
    elif sweep_run:
        store = Store(uri, ens.meta.get("experiment") or "Default")
        rid = store.client.create_run(store.exp_id, run_name=f"select-{Path(out).stem}",
                                      tags={ROLE: "selection", PARENT: sweep_run}).info.run_id
        store.log(rid, stats,
                  params={"strategy": strategy, "pool_factor": pool_factor, "source": str(candidates or explore_from),
                          "seed": seed,
                          **({"temperature_K": ",".join(f"{t:g}" for t in temperature), "trajectories": trajectories,
                              "steps": steps, "threshold_eV_per_A": threshold} if explore_from else {})})
        with tempfile.TemporaryDirectory() as t:
            store.client.log_artifact(rid, str(write_selection(chosen, Path(t) / Path(out).name)))
        store.end(rid, "FINISHED")
        console.print(f"logged as run {rid} under sweep run {sweep_run} ({uri}); label them with: sweep data generate "
                      f"--relabel {out} -o labelled.npz", soft_wrap=True)
    else:
        console.print(f"not logged in MLflow (the ensemble has no sweep run); label them with: sweep data generate "
                      f"--relabel {out} -o labelled.npz", soft_wrap=True)
    return chosen


__all__ = ["SelectError", "run_select"]
