"""Does one trial fit the cluster? Checked before anything starts (a trial that fits nowhere waits forever)."""

from __future__ import annotations

import os

from orchestrator.spec.sweep import SweepSpec


def local_nodes() -> list[dict[str, float]]:
    """The local Ray cluster ``sweep run`` starts: this machine's CPUs and GPUs."""
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except ImportError:  # pragma: no cover - torch is a dependency
        gpus = 0.0
    return [{"CPU": float(os.cpu_count() or 1), "GPU": gpus}]


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of the alive nodes of the Ray cluster this process is connected to."""
    from orchestrator.cluster.shared_storage import alive_nodes

    return [dict(n["Resources"]) for n in alive_nodes()]


def _fits(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """First-fit of the bundles (largest first) onto the nodes' resources."""
    free = [dict(n) for n in nodes]
    for b in sorted(bundles, key=lambda b: (-b.get("GPU", 0.0), -b.get("CPU", 0.0))):
        for n in free:
            if all(n.get(r, 0.0) + 1e-9 >= v for r, v in b.items()):
                for r, v in b.items():
                    n[r] = n.get(r, 0.0) - v
                break
        else:
            return False
    return True


def trial_fit_error(spec: SweepSpec, nodes: list[dict[str, float]], where: str) -> str | None:
    """None when one trial's bundles fit onto ``nodes``, else one line naming the numbers and the fix.

    ``where``: how the line names the capacity (``"this machine has"``, ``"the largest node has"``).
    """
    res, k = spec.resources, spec.cv.k
    bundles = res.bundles(k)
    if _fits(bundles, nodes):
        return None
    need_cpu, need_gpu = sum(b.get("CPU", 0.0) for b in bundles), sum(b.get("GPU", 0.0) for b in bundles)
    have_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    have_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    asks = f"{need_cpu:g} CPU" + (f" and {need_gpu:g} GPU" if need_gpu else "")
    has = f"{have_cpu:g} CPU" + (f" and {have_gpu:g} GPU" if need_gpu else "")
    if res.resolved_layout() == "stacked":
        fixes = []
        if need_cpu > have_cpu:
            fixes.append(f"--set resources.cpus_per_trial={max(have_cpu, 1.0):g}")
        if need_gpu > have_gpu:
            fixes.append("--set resources.gpus_per_trial=0" if have_gpu == 0
                         else f"--set resources.gpus_per_trial={have_gpu:g}")
        how = f"the stacked trial of {k} folds"
    else:
        per_fold = (have_cpu - 0.01) / k
        fixes = [f"--set resources.cpus_per_fold={int(per_fold * 100) / 100:g}" if per_fold >= 0.01 else
                 f"--set cv.k={max(2, int(have_cpu // res.cpus_per_fold))}"]
        if need_gpu > have_gpu:
            fixes.append("--set resources.gpus_per_fold=0" if have_gpu == 0 else
                         f"--set resources.gpus_per_fold={int(have_gpu / k * 100) / 100:g}")
        how = f"{k} folds × cpus_per_fold {res.cpus_per_fold:g} + 0.01 for the trial"
    return f"one trial asks for {asks} ({how}) but {where} {has}: no trial could ever start; use {' '.join(fixes)}"
