"""Sweeps on a multi-node Ray cluster: the checks a driver makes before trials start."""

from __future__ import annotations

import os
from pathlib import Path


class StorageNotShared(RuntimeError):
    """The sweep's storage directory is not visible from every node; one line."""


def alive_nodes() -> list[dict]:
    """Alive nodes of the connected cluster (``ray.nodes()`` entries)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _exists(path: str) -> bool:
    return os.path.exists(path)


def check_storage_shared(storage: str | Path, marker: Path) -> int:
    """Check that every alive node sees ``marker`` (a file the driver wrote under a local ``storage``).

    URIs (``s3://``, ``gs://`` ...) are not checked: every node reaches them. On a one-node cluster
    any local path works. Returns the number of nodes checked. Nodes that join later (autoscaling)
    are checked by Ray itself at a trial's first checkpoint.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if "://" in str(storage):
        return 0
    nodes = alive_nodes()
    if len(nodes) < 2:
        return len(nodes)
    probe = ray.remote(num_cpus=0, max_retries=0)(_exists)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(marker)) for n in nodes]
    try:
        seen = ray.get(refs, timeout=120)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
        raise StorageNotShared(f"could not check that storage {storage} is visible on all {len(nodes)} nodes: "
                               f"{str(e).strip().splitlines()[0]}") from None
    missing = [n for n, ok in zip(nodes, seen, strict=True) if not ok]
    if missing:
        where = ", ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in missing)
        raise StorageNotShared(
            f"storage {storage} is not visible on {len(missing)} of {len(nodes)} nodes ({where}): set `storage` "
            "to a shared filesystem mounted at the same path on every node, or to an s3:// URI")
    return len(nodes)


__all__ = ["StorageNotShared", "alive_nodes", "check_storage_shared"]
