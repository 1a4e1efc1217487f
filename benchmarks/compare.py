"""This project's SchNet against schnetpack 2.1.1 and PyG's SchNet, side by side, same batches; or (``--model
painn``) this project's PaiNN against schnetpack's.

    python benchmarks/compare.py [--rounds 5] [--batches 10] [--threads 0] [--sizes ethanol,iso17,aspirin]
                                 [--impls sweep,schnetpack,pyg] [--model schnet|painn] [--json | --markdown]
                                 [--setup-only]
    python benchmarks/compare.py --render SAVED.json [--markdown]    # the table of a saved --json run

The peers live in their own venv, ``benchmarks/.venv-peers`` (gitignored), which the first run
creates: ``torch==2.13.0`` (pinned: an unpinned torch would pull a multi-GB CUDA build),
``schnetpack==2.1.1`` installed with ``--no-deps`` plus its runtime requirements by hand (its
metadata pins ``sympy<=1.12``, which conflicts with torch 2.13's ``sympy>=1.13.3``; the modules
used here import fine with torch's sympy), ``torch_geometric``, and a ``sitecustomize.py`` that
defines ``torch.utils.data.dataset.T_co`` (removed in recent torch; schnetpack 2.1.1 imports it).
Only that venv is patched.

Batches (paper-sized molecules on a jittered 1.4 Å grid, all pairs, batch 32) are built once
here and written to a temporary file that every implementation reads. Each measurement runs in
a fresh subprocess (``benchmarks/peer_worker.py``): warm-up, then 3 timed passes (median),
timed by the wall clock and by the process's CPU time (with ``--threads 1`` the CPU-time figure
does not move when other work shares the machine; with more threads it counts spin-waits too).
Rounds alternate the implementations (the order rotates every round) and the reported figure is
the median over rounds. Peak memory is the worker's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_VENV = HERE / ".venv-peers"
PEER_PY = PEER_VENV / "bin" / "python"
MARKER = PEER_VENV / ".sweep-peers-v1"
SIZES = {
    "ethanol": ("ethanol (C2H6O)", [6, 6, 8] + [1] * 6),
    "iso17": ("ISO17 (C7H10O2)", [6] * 7 + [8] * 2 + [1] * 10),
    "aspirin": ("aspirin (C9H8O4)", [6] * 9 + [8] * 4 + [1] * 8),
}
PEER_REQUIREMENTS = [  # schnetpack 2.1.1's Requires-Dist minus dev tools (pre-commit, black,
    # tensorboard*) and sympy (torch's own is used), plus PyG
    "numpy>=2.0", "ase>=3.21", "h5py", "pyyaml", "hydra-core>=1.1.0", "pytorch-lightning>=2.0.0",
    "torchmetrics", "hydra-colorlog>=1.1.0", "rich", "fasteners", "dirsync", "torch-ema",
    "matscipy>=1.1.0", "tqdm", "protobuf", "torch_geometric",
]
SITECUSTOMIZE = '''\
# Written by benchmarks/compare.py: schnetpack 2.1.1 imports T_co from torch.utils.data, which
# torch 2.13 no longer defines. Only this benchmark venv is patched.
import typing as _typing

try:
    import torch.utils.data.dataloader as _dl
    import torch.utils.data.dataset as _ds

    _T_co = _typing.TypeVar("T_co", covariant=True)
    for _m in (_dl, _ds):
        if not hasattr(_m, "T_co"):
            _m.T_co = _T_co
except Exception:  # torch missing or broken: leave it to the import to fail loudly
    pass
'''


def ensure_peers(log=print) -> None:
    """Create ``benchmarks/.venv-peers`` with schnetpack 2.1.1 and torch_geometric (once)."""
    if MARKER.exists() and PEER_PY.exists():
        return
    log(f"setting up {PEER_VENV} (once) ...")
    if not PEER_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(PEER_PY), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "--no-deps", "schnetpack==2.1.1"], check=True)
    subprocess.run([*pip, "torch==2.13.0", *PEER_REQUIREMENTS], check=True)
    site = subprocess.run([str(PEER_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "sitecustomize.py").write_text(SITECUSTOMIZE)
    subprocess.run([str(PEER_PY), "-c", "import schnetpack, torch_geometric"], check=True)
    MARKER.write_text("schnetpack==2.1.1 torch_geometric torch==2.13.0\n")


def write_batches(z: list[int], n_batches: int, path: Path, batch_size: int = 32, seed: int = 0) -> None:
    """Molecules on a jittered 1.4 Å grid (realistic distances), all pairs, this project's batching."""
    sys.path.insert(0, str(ROOT))
    from schnet_model import Molecules

    rng = np.random.default_rng(seed)
    k, n = len(z), n_batches * batch_size
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:k] * 1.4
    R = grid[None] + rng.normal(0, 0.1, (n, k, 3))
    data = Molecules(Z=np.tile(z, n), R=R.reshape(-1, 3), atom_ptr=np.arange(n + 1) * k,
                     E=rng.normal(0, 1, n), F=rng.normal(0, 1, (n * k, 3)), energy_unit="kcal/mol")
    arrays: dict[str, np.ndarray] = {"n_batches": np.array(n_batches)}
    for b in range(n_batches):
        batch = data.batch(np.arange(b * batch_size, (b + 1) * batch_size), None)
        for key in ("Z", "R", "mol", "idx_i", "idx_j", "n_atoms", "E", "F"):
            arrays[f"{b}_{key}"] = getattr(batch, key).numpy()
    np.savez(path, **arrays)


def run_worker(impl: str, data: Path, threads: int, modes: str = "train,inference", model: str = "schnet") -> dict:
    py = sys.executable if impl == "sweep" else str(PEER_PY)
    cmd = [py, str(HERE / "peer_worker.py"), "--impl", impl, "--data", str(data), "--threads", str(threads),
           "--modes", modes, "--model", model]
    env = {**os.environ, "PYTHONPATH": str(ROOT) if impl == "sweep" else ""}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if r.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    ap.add_argument("--batches", type=int, default=10, help="batches of 32 per timed pass")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--sizes", default="ethanol,iso17,aspirin")
    ap.add_argument("--impls", default=None, help="default: sweep,schnetpack,pyg (SchNet), sweep,schnetpack (PaiNN)")
    ap.add_argument("--model", choices=("schnet", "painn"), default="schnet", help="the model family compared")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/benchmarks.md)")
    ap.add_argument("--render", metavar="FILE.json", help="print the table of a saved --json result; run nothing")
    ap.add_argument("--setup-only", action="store_true", help="only create the peer venv")
    args = ap.parse_args()
    if args.render:
        try:
            saved = json.loads(Path(args.render).read_text())
            summary, meta = {k: v for k, v in saved.items() if k != "meta"}, saved["meta"]
            rows(summary)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            ap.error(f"--render {args.render}: not a saved `compare.py --json` result ({type(e).__name__}: {e})")
        render(summary, meta, markdown=args.markdown)
        return
    known_impls = ("sweep", "schnetpack", "pyg") if args.model == "schnet" else ("sweep", "schnetpack")
    impls = args.impls.split(",") if args.impls else list(known_impls)
    sizes = args.sizes.split(",")
    for opt, given, known in (("--impls", impls, known_impls), ("--sizes", sizes, tuple(SIZES))):
        if unknown := [x for x in given if x not in known]:
            ap.error(f"{opt}: unknown {', '.join(map(repr, unknown))}; "
                     f"expected a comma-separated subset of {','.join(known)}")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if any(i != "sweep" for i in impls):
        ensure_peers(log)
    if args.setup_only:
        return
    runs: dict[str, dict[str, list[dict]]] = {i: {s: [] for s in sizes} for i in impls}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for s in sizes:
            files[s] = Path(tmp, f"{s}.npz")
            write_batches(SIZES[s][1], args.batches, files[s])
        for r in range(args.rounds):
            order = impls[r % len(impls):] + impls[: r % len(impls)]
            for s in sizes:
                for impl in order:
                    res = run_worker(impl, files[s], args.threads, model=args.model)
                    runs[impl][s].append(res)
                    log(f"round {r + 1}/{args.rounds} {s:8s} {impl:10s} train {res['train']:7.0f} "
                        f"({res['train_cpu']:.0f}/CPU-s)  inference {res['inference']:7.0f} "
                        f"({res['inference_cpu']:.0f}/CPU-s) molecules/s")
    summary = {
        impl: {s: {
            "train": statistics.median(x["train"] for x in runs[impl][s]),
            "inference": statistics.median(x["inference"] for x in runs[impl][s]),
            "train_cpu": statistics.median(x["train_cpu"] for x in runs[impl][s]),
            "inference_cpu": statistics.median(x["inference_cpu"] for x in runs[impl][s]),
            "peak_rss_mib": max(x["peak_rss_mib"] for x in runs[impl][s]),
            "rss_growth_mib": max(x["rss_growth_mib"] for x in runs[impl][s]),
            "params": runs[impl][s][0]["params"],
        } for s in sizes} for impl in impls
    }
    threads = runs[impls[0]][sizes[0]][0]["threads"]
    meta = {"model": args.model, "date": datetime.date.today().isoformat(), "machine": machine(), "threads": threads,
            "rounds": args.rounds, "batch_size": 32, "batches_per_pass": args.batches}
    if args.json:
        print(json.dumps({**summary, "meta": meta}))
        return
    render(summary, meta, markdown=args.markdown)


COLUMNS = ("molecule", "impl", "params", "train mol/s", "× spk", "per CPU-s", "× spk", "inference mol/s",
           "× spk", "per CPU-s", "× spk", "peak RSS MiB", "RSS growth MiB")


def rows(summary: dict) -> list[list[str]]:
    """Table cells: one row per molecule size and implementation, ratios to schnetpack."""
    impls = [i for i in summary if i != "meta"]
    out = []
    for s in summary[impls[0]]:
        base = summary.get("schnetpack", {}).get(s)
        for impl in impls:
            x = summary[impl][s]
            cells = []
            for k in ("train", "train_cpu", "inference", "inference_cpu"):
                cells += [f"{x[k]:.0f}", f"{x[k] / base[k]:.2f}" if base else "–"]
            out.append([SIZES[s][0] if impl == impls[0] else "", impl, f"{x['params']:,}", *cells,
                        f"{x['peak_rss_mib']:.0f}", f"{x['rss_growth_mib']:.0f}"])
    return out


def render(summary: dict, meta: dict, markdown: bool = False) -> None:
    """Print the comparison as a Rich table, or as a Markdown table (for docs/benchmarks.md)."""
    model = "PaiNN paper size (MD17), 5 Å cutoff" if meta.get("model") == "painn" else "SchNet paper size"
    title = (f"{model}, batch 32, {meta['threads']} torch thread(s), {meta['machine']}, {meta['date']}, "
             f"median of {meta['rounds']} rounds")
    if markdown:
        print(f"{title}\n\n| " + " | ".join(COLUMNS) + " |\n| " + " | ".join(
            "---" if c in ("molecule", "impl") else "---:" for c in COLUMNS) + " |")
        for r in rows(summary):
            print("| " + " | ".join(r) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("molecule", "impl") else "right")
    for r in rows(summary):
        table.add_row(*r)
    Console(width=160).print(table)

if __name__ == "__main__":
    main()
