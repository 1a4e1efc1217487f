"""Data pipeline: neighbour-pair preprocessing and batch loading versus a training step.

    python benchmarks/data_pipeline.py [--molecules 100000] [--ase-sample 2000]

1. Preprocessing N ISO17-sized molecules (C7H10O2, 19 atoms): this project's all-pairs path and
   cutoff path (vesin, 5 Å) side by side with ASE's ``neighbor_list`` (run on a sample and
   scaled to N, since it is per molecule). Target: < 30 s for 100k molecules.
2. Batch loading (collating 32 random molecules) as a fraction of a paper-size energy+force
   training step on the same molecules. Target: < 5 %.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from schnet_model import ModelConfig, Molecules, SchNet
from schnet_model.data.neighbors import NeighborCache
from schnet_model.training.loss import energy_force_loss

ISO17 = [6] * 7 + [8] * 2 + [1] * 10
CUTOFF = 5.0


def iso17_like(n: int, seed: int = 0) -> Molecules:
    """n molecules of 19 atoms on a jittered 1.4 Å grid (ISO17-like distances and extent)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:19] * 1.4
    R = grid[None] + rng.normal(0, 0.1, (n, 19, 3))
    return Molecules(Z=np.tile(ISO17, n), R=R.reshape(-1, 3), atom_ptr=np.arange(n + 1) * 19,
                     E=rng.normal(0, 1, n), F=rng.normal(0, 1, (n * 19, 3)), energy_unit="eV")


def ase_seconds(data: Molecules, sample: int) -> float:
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    t0 = time.perf_counter()
    for m in range(sample):
        a, b = data.atom_ptr[m], data.atom_ptr[m + 1]
        neighbor_list("ij", Atoms(numbers=data.Z[a:b], positions=data.R[a:b]), CUTOFF)
    return (time.perf_counter() - t0) * len(data) / sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", type=int, default=100_000)
    ap.add_argument("--ase-sample", type=int, default=2_000)
    args = ap.parse_args()
    data = iso17_like(args.molecules)
    t = Table(title=f"neighbour pairs for {args.molecules:,} ISO17-sized molecules (19 atoms)")
    for c in ("implementation", "pairs", "seconds", "molecules/s"):
        t.add_column(c, justify="right" if c != "implementation" else "left")
    t0 = time.perf_counter()
    nb = NeighborCache(data.R, data.atom_ptr, None)
    s = time.perf_counter() - t0
    t.add_row("sweep all pairs (template per size)", f"{int(nb.pair_counts.sum()):,}", f"{s:.3f}",
              f"{args.molecules / s:,.0f}")
    t0 = time.perf_counter()
    nb = NeighborCache(data.R, data.atom_ptr, CUTOFF)
    s = time.perf_counter() - t0
    t.add_row(f"sweep cutoff {CUTOFF} Å (vesin, batched)", f"{int(nb.pair_counts.sum()):,}", f"{s:.2f}",
              f"{args.molecules / s:,.0f}")
    s = ase_seconds(data, args.ase_sample)
    t.add_row(f"ASE neighbor_list {CUTOFF} Å (from {args.ase_sample:,})", "", f"{s:.1f}", f"{args.molecules / s:,.0f}")
    Console().print(t)

    # batch loading vs a training step
    torch.manual_seed(0)
    model = SchNet(ModelConfig())
    opt = torch.optim.Adam(model.parameters())
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(data), 32, replace=False) for _ in range(40)]
    data.batch(idx[0], None)  # build caches
    t0 = time.perf_counter()
    batches = [data.batch(i, None) for i in idx]
    load = (time.perf_counter() - t0) / len(idx)
    for b in batches[:3]:
        loss = energy_force_loss(model(b, create_graph=True), b, 0.01, True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    for b in batches[3:13]:
        loss = energy_force_loss(model(b, create_graph=True), b, 0.01, True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step = (time.perf_counter() - t0) / 10
    t2 = Table(title="batch loading vs training step (batch 32, 19 atoms, paper-size SchNet)")
    for c in ("collate ms", "train step ms", "loading fraction"):
        t2.add_column(c, justify="right")
    t2.add_row(f"{load * 1e3:.2f}", f"{step * 1e3:.1f}", f"{load / (load + step):.2%}")
    Console().print(t2)


if __name__ == "__main__":
    main()
