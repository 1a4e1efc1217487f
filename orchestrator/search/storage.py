"""Where a sweep keeps its own files (``sweeps/NAME/sweep.json``) and Tune its results and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.spec.sweep import SweepSpec
from schnet_model.files import write_text


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
        meta = d / "sweep.json"
        if meta.is_file() and (json.loads(meta.read_text()).get("status") == "finished") == finished:
            cands.append(d)
    return max(cands, key=lambda p: p.stat().st_mtime).name if cands else None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(obj, indent=2))
