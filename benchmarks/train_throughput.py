"""Training-step and inference throughput of this project's SchNet (paper size, batch 32).

    python benchmarks/train_throughput.py [--steps 30] [--repeats 5] [--threads N] [--json]

Molecules/s for an energy+force training step (forward, forces with create_graph, loss,
backward, Adam step) and for inference (energy + forces, no create_graph), on ethanol-sized
(9 atoms), ISO17-sized (19 atoms) and aspirin-sized (21 atoms) molecules. Batches are pre-built.
Side by side with schnetpack and PyG: ``benchmarks/compare.py`` (results in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from schnet_model import ModelConfig, Molecules, SchNet
from schnet_model.training.loss import energy_force_loss

SIZES = {"ethanol (C2H6O)": [6, 6, 8] + [1] * 6, "ISO17 (C7H10O2)": [6] * 7 + [8] * 2 + [1] * 10,
         "aspirin (C9H8O4)": [6] * 9 + [8] * 4 + [1] * 8}


def molecules(z: list[int], n: int, seed: int = 0) -> Molecules:
    """n conformations of a molecule with atoms on a jittered 1.4 Å grid (realistic distances)."""
    rng = np.random.default_rng(seed)
    k = len(z)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:k] * 1.4
    R = grid[None] + rng.normal(0, 0.1, (n, k, 3))
    return Molecules(Z=np.tile(z, n), R=R.reshape(-1, 3), atom_ptr=np.arange(n + 1) * k,
                     E=rng.normal(0, 1, n), F=rng.normal(0, 1, (n * k, 3)), energy_unit="kcal/mol")


def measure(z: list[int], steps: int, repeats: int, batch_size: int = 32) -> dict[str, float]:
    torch.manual_seed(0)
    model = SchNet(ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = molecules(z, batch_size * steps)
    batches = [data.batch(np.arange(i * batch_size, (i + 1) * batch_size), None) for i in range(steps)]

    def train_pass() -> None:
        for b in batches:
            pred = model(b, forces=True, create_graph=True)
            loss = energy_force_loss(pred, b, 0.01, True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def infer_pass() -> None:
        for b in batches:
            model(b, forces=True)

    out = {}
    for name, fn in (("train", train_pass), ("inference", infer_pass)):
        fn()  # warm-up pass
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            rates.append(steps * batch_size / (time.perf_counter() - t0))
        out[name] = statistics.median(rates)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="batches per timed pass")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: measure(z, args.steps, args.repeats) for name, z in SIZES.items()}
    if args.json:
        print(json.dumps({"sweep": results, "torch": torch.__version__, "threads": torch.get_num_threads()}))
        return
    table = Table(title=f"SchNet paper size, batch 32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                        f"{platform.processor() or platform.machine()}")
    table.add_column("molecule")
    table.add_column("atoms", justify="right")
    table.add_column("train molecules/s", justify="right")
    table.add_column("inference molecules/s", justify="right")
    for name, r in results.items():
        table.add_row(name, str(len(SIZES[name])), f"{r['train']:.0f}", f"{r['inference']:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
