"""Where a sweep keeps its own files (``sweeps/NAME/sweep.json``) and Tune its results and checkpoints."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from orchestrator.search.state import SWEEP_JSON, SweepState
from orchestrator.spec.sweep import SweepSpec


def storage_root(spec: SweepSpec) -> Path:
    """Local directory of the sweeps' ``sweep.json`` (and of Tune's results unless ``storage`` is a URI)."""
    return Path(spec.storage) if spec.storage and "://" not in spec.storage else Path("sweeps").resolve()


def tune_storage(spec: SweepSpec) -> str:
    """Where Tune keeps results and checkpoints: ``storage`` as a path, or a URI (s3://bucket/sweeps)."""
    return spec.storage.rstrip("/") if spec.storage and "://" in spec.storage else str(storage_root(spec))


def latest_sweep(root: Path, prefix: str, finished: bool) -> str | None:
    """Newest sweep of this spec name that finished (``finished``) or did not."""
    cands = []
    for d in root.glob(f"{prefix}-*"):
        meta = d / SWEEP_JSON
        if meta.is_file() and (SweepState.status_of(meta) == "finished") == finished:
            cands.append(d)
    return max(cands, key=lambda p: p.stat().st_mtime).name if cands else None


def repair_checkpoints(experiment: str) -> list[str]:
    """Before a resume: give every checkpoint that Tune's newest experiment snapshot names but storage no longer
    holds the content of a later checkpoint of the trial (the newest but one: the newest may be incomplete); returns
    the repaired paths.

    Tune's checkpoint manager deletes a trial's oldest checkpoint (``num_to_keep``) in the same step that forces the
    next snapshot; a driver killed between the two leaves a snapshot naming a deleted checkpoint, and restoring
    that trial fails ("does not exist on storage anymore"). The copy lets it resume from a later epoch instead (the
    trial's own state, epoch included, is in the checkpoint). Local storage only: a URI is left to Tune."""
    root = Path(experiment)
    if "://" in experiment or not root.is_dir():
        return []
    states = sorted(root.glob("experiment_state-*.json"))  # named by time: the newest is what Tune restores
    if not states:
        return []
    # the checkpoint manager is stored as a hex-encoded pickle; its paths are plain bytes inside (nothing is unpickled)
    blobs = [bytes.fromhex(h) for h in re.findall(r'"value\\?": \\?"([0-9a-f]+)\\?"', states[-1].read_text())]
    named = {(t.decode(), c.decode()) for b in blobs
             for t, c in re.findall(rb"/([^/\x00-\x1f]+)/(checkpoint_\d{6})", b)}
    repaired = []
    for trial, name in sorted(named):
        trial_dir = root / trial
        remaining = sorted(trial_dir.glob("checkpoint_*")) if trial_dir.is_dir() else []
        if remaining and not (trial_dir / name).exists():  # the newest may be the one a kill cut short: the one before
            shutil.copytree(remaining[-2] if len(remaining) > 1 else remaining[-1], trial_dir / name)
            repaired.append(str(trial_dir / name))
    return repaired
