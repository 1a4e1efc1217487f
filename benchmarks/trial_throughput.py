"""Trial throughput: k fold members training at once, per-fold processes vs one stacked model.

    python benchmarks/trial_throughput.py [--k 5] [--steps 20] [--sizes ethanol,iso17,aspirin]
                                          [--device cpu|cuda] [--layouts folds,stack,graphs] [--json]

Molecules/s **summed over the k members** of a trial (paper-size SchNet, batch 32 per member,
energy + force training steps with Adam, molecules on a jittered 1.4 Å grid, all pairs), for:

- ``folds``: today's per-fold layout — k processes training concurrently, each a
  :class:`~schnet_model.training.trainer.Trainer`-style loop (collate a batch, forward with forces,
  loss, backward, Adam) with ``max(1, cpus // k)`` torch threads on CPU (what fold actors of
  ``cpus_per_fold = cpus/k`` get), or all on the one GPU;
- ``stack``: one process, :class:`~schnet_model.training.stacked.StackedTrainer` steps (stacked
  collation of the k members' own batches, one stacked step), eager, all CPU threads;
- ``graphs`` (CUDA only): the same with the whole step replayed as one CUDA graph;
- ``stack-autograd``, ``graphs-autograd``: the same with forces by autograd (a double backward in
  training) instead of the explicit force backward — the measurement behind the default.

Each layout runs in fresh processes. Kernels are compiled at once (``compile_after=0``) and
warm-up steps (compilation, graph capture) are not timed; k fold processes start their timed
steps together (a file barrier) and the rate is their total molecules over the span from the
first start to the last end. Collation is inside the timed loop for every layout. Layouts alternate
over ``--rounds`` rounds (the order rotating) and the median is reported: on a shared machine
single measurements move by ±30%.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"ethanol": ("ethanol (C2H6O)", [6, 6, 8] + [1] * 6),
         "iso17": ("ISO17 (C7H10O2)", [6] * 7 + [8] * 2 + [1] * 10),
         "aspirin": ("aspirin (C9H8O4)", [6] * 9 + [8] * 4 + [1] * 8)}
HERE = Path(__file__).resolve()
BATCH = 32


def _molecules(z: list[int], n: int, seed: int):
    import numpy as np

    from schnet_model import Molecules

    rng = np.random.default_rng(seed)
    a = len(z)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:a] * 1.4
    R = grid[None] + rng.normal(0, 0.1, (n, a, 3))
    return Molecules(Z=np.tile(z, n), R=R.reshape(-1, 3), atom_ptr=np.arange(n + 1) * a, E=rng.normal(0, 1, n),
                     F=rng.normal(0, 1, (n * a, 3)), energy_unit="kcal/mol")


def _wait(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def worker(a: argparse.Namespace) -> None:
    """One process: a fold (``folds``) or the whole stack (``stack``/``graphs``); prints a JSON line."""
    import numpy as np
    import torch

    from schnet_model import ModelConfig, SchNet, TrainingConfig
    from schnet_model.training.loss import energy_force_loss
    from schnet_model.training.optim import make_adam
    from schnet_model.training.stacked import Member, StackedTrainer

    torch.set_num_threads(a.threads)
    z = SIZES[a.size][1]
    n_mols = BATCH * a.steps
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if a.layout == "folds":
        torch.manual_seed(a.index)
        model = SchNet(ModelConfig()).to(dev)
        model.compile_after = 0
        opt = make_adam(model.parameters(), 1e-4)
        data = _molecules(z, n_mols, a.index)
        rng = np.random.default_rng(a.index)

        def run(steps: int) -> None:
            order = rng.permutation(n_mols)
            for s in range(steps):
                b = data.batch(order[s * BATCH:(s + 1) * BATCH], None).to(dev)
                loss = energy_force_loss(model(b, forces=True, create_graph=True), b, 0.01, True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync()
        k = 1
    else:
        members = [Member(_molecules(z, n_mols, m), _molecules(z, 4, 100 + m),
                          TrainingConfig(lr=1e-4, seed=m, compile_after=0))
                   for m in range(a.k)]
        st = StackedTrainer(ModelConfig(), members, device=dev, graphs=a.layout.startswith("graphs"),
                            forces_by="autograd" if a.layout.endswith("-autograd") else "explicit")
        orders = [np.random.default_rng(m).permutation(n_mols) for m in range(a.k)]

        def run(steps: int) -> None:
            for s in range(steps):
                picks = [o[s * BATCH:(s + 1) * BATCH] for o in orders]
                b = st.train_collator.collate(picks, fill_to=BATCH)
                st._run_step(b.pin_memory() if dev.type == "cuda" else b, [1e-4] * a.k, [True] * a.k)
            sync()
        k = a.k
    run(a.warmup)
    if a.barrier:
        Path(a.barrier, f"ready_{a.index}").touch()
        _wait(Path(a.barrier, "go"))
    t0 = time.time()
    run(a.steps)
    t1 = time.time()
    mode = st.mode if a.layout != "folds" else f"fold process, {a.threads} thread(s)"
    print(json.dumps({"t0": t0, "t1": t1, "molecules": a.steps * BATCH * k, "mode": mode}), flush=True)


def _spawn(a: argparse.Namespace, layout: str, size: str, index: int, threads: int,
           barrier: str | None) -> subprocess.Popen:
    args = [sys.executable, str(HERE), "--worker", "--layout", layout, "--size", size, "--index", str(index),
            "--threads", str(threads), "--k", str(a.k), "--steps", str(a.steps), "--warmup", str(a.warmup),
            "--device", a.device] + (["--barrier", barrier] if barrier else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(HERE.parent.parent))


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"error: benchmark worker failed ({p.returncode}): {stderr.strip().splitlines()[-1:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def measure(a: argparse.Namespace, layout: str, size: str) -> dict:
    """Molecules/s summed over the k members for one layout and size."""
    cpus = os.cpu_count() or 1
    if layout == "folds":
        with tempfile.TemporaryDirectory() as barrier:
            threads = max(1, cpus // a.k) if a.device == "cpu" else 1
            procs = [_spawn(a, layout, size, i, threads, barrier) for i in range(a.k)]
            while not all(Path(barrier, f"ready_{i}").exists() for i in range(a.k)):
                if any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.05)
            Path(barrier, "go").touch()
            res = _collect(procs)
    else:
        res = _collect([_spawn(a, layout, size, 0, cpus, None)])
    span = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    return {"molecules_per_s": sum(r["molecules"] for r in res) / span, "mode": res[0]["mode"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5, help="fold members per trial")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per member")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (layouts alternate; the median is reported)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation, graph capture)")
    ap.add_argument("--sizes", default="ethanol,iso17,aspirin")
    ap.add_argument("--layouts", default=None,
                    help="of folds,stack,stack-autograd,graphs,graphs-autograd (default: folds,stack[,graphs on CUDA])")
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--layout", "--size", "--barrier"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    for hidden in ("--index", "--threads"):
        ap.add_argument(hidden, type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    sizes = a.sizes.split(",")
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise SystemExit(f"error: unknown --sizes {bad}; expected some of {list(SIZES)}")
    layouts = (a.layouts
               or ("folds,stack,graphs,graphs-autograd" if a.device.startswith("cuda") else "folds,stack")).split(",")
    known = ("folds", "stack", "stack-autograd", "graphs", "graphs-autograd")
    bad = [x for x in layouts if x not in known]
    if bad or (any(x.startswith("graphs") for x in layouts) and not a.device.startswith("cuda")):
        raise SystemExit(f"error: --layouts {a.layouts!r}: expected some of {', '.join(known)} (graphs: CUDA only)")
    rounds: dict[str, dict[str, list[dict]]] = {s: {x: [] for x in layouts} for s in sizes}
    for r in range(a.rounds):  # layouts alternate, the order rotating every round; medians reported
        for s in sizes:
            for x in layouts[r % len(layouts):] + layouts[: r % len(layouts)]:
                rounds[s][x].append(measure(a, x, s))
    results = {s: {x: {"molecules_per_s": statistics.median(m["molecules_per_s"] for m in ms), "mode": ms[0]["mode"],
                       "rounds": [round(m["molecules_per_s"]) for m in ms]} for x, ms in r.items()}
               for s, r in rounds.items()}
    import torch
    from compare import machine as cpu_name  # benchmarks/compare.py: the CPU's model name

    machine = torch.cuda.get_device_name() if a.device.startswith("cuda") else cpu_name()
    meta = {"date": datetime.date.today().isoformat(), "machine": machine, "cpus": os.cpu_count(), "device": a.device,
            "torch": torch.__version__, "k": a.k, "batch": BATCH, "steps": a.steps, "rounds": a.rounds}
    if a.json:
        print(json.dumps({"meta": meta, "results": results}))
        return
    print(f"trial throughput, k = {a.k} members × batch {BATCH}, molecules/s summed over members (median of "
          f"{a.rounds} rounds) — {meta['date']}, "
          f"{machine}, {meta['cpus']} CPUs, {a.device}, torch {meta['torch']}")
    print(f"| molecule | {' | '.join(layouts)} | stack ÷ folds |")
    print("|---|" + "---:|" * (len(layouts) + 1))
    for s, r in results.items():
        best = max(r[x]["molecules_per_s"] for x in layouts if x != "folds")
        cells = " | ".join(f"{r[x]['molecules_per_s']:,.0f}" for x in layouts)
        print(f"| {SIZES[s][0]} | {cells} | {best / r['folds']['molecules_per_s']:.2f}× |" if "folds" in r else
              f"| {SIZES[s][0]} | {cells} | – |")
    for x in layouts:
        print(f"{x}: {next(iter(results.values()))[x]['mode']}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
