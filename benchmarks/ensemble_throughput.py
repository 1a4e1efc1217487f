"""Ensemble prediction throughput: k = 5 members in one vectorised pass vs 5 single-model passes vs 1 model.

    python benchmarks/ensemble_throughput.py [--repeats 5] [--k 5] [--json]

Molecules/s for energies + forces of paper-size SchNet members (64/64/3, 300 Gaussians, no
cutoff) on ethanol-sized (9 atoms) and aspirin-sized (21 atoms) molecules:

- ``1 model``: one member's :meth:`SchNet.forward` on pre-built batches of 32;
- ``5 single passes``: every member's :meth:`SchNet.forward` on the same batches, one after the other
  (the cost the ensemble is compared with);
- ``ensemble, batch 32``: :meth:`SchNetEnsemble.evaluate_batch` (all members at once) on batches of 32;
- ``ensemble predict()``: end to end from a :class:`Molecules`: its own memory-bounded batches,
  pair lists, mean/std reduction, numpy outputs;
- ``member loop``: the ensemble's functional forward one member at a time (what vectorising saves).

``ratio`` = time of ``ensemble predict()`` / time of the 5 single passes (target ≤ 1.2). The last
column runs ``predict()`` with tiny members (8 features), where the model costs almost nothing,
so molecules/s there bounds the per-molecule overhead of batching and reduction (no Python work
per molecule). Repeats are interleaved and the median is reported (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from schnet_model import ModelConfig, Molecules, SchNet
from schnet_model.ensemble import SchNetEnsemble
from schnet_model.model_dir import ModelInfo

SIZES = {"ethanol (C2H6O)": [6, 6, 8] + [1] * 6, "aspirin (C9H8O4)": [6] * 9 + [8] * 4 + [1] * 8}


def molecules(z: list[int], n: int, seed: int = 0) -> Molecules:
    """n conformations of a molecule with atoms on a jittered 1.4 Å grid (realistic distances)."""
    rng = np.random.default_rng(seed)
    k = len(z)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)[:k] * 1.4
    R = grid[None] + rng.normal(0, 0.1, (n, k, 3))
    return Molecules(Z=np.tile(z, n), R=R.reshape(-1, 3), atom_ptr=np.arange(n + 1) * k, E=None, F=None,
                     energy_unit="kcal/mol")


def members(k: int, cfg: ModelConfig) -> list[SchNet]:
    out = []
    for s in range(k):
        torch.manual_seed(s)
        m = SchNet(cfg).eval()
        ref = np.zeros(cfg.max_z)
        ref[[1, 6, 8]] = [-0.5, -37.8, -75.0]
        m.offsets.set(ref, 2.0)
        out.append(m)
    return out


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, repeats interleaved (after one warm-up call each)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def measure(z: list[int], k: int, n: int, repeats: int, batch_size: int = 32) -> dict[str, float]:
    models = members(k, ModelConfig())
    ens = SchNetEnsemble.from_models(models, [ModelInfo("kcal/mol", [1, 6, 8])] * k)
    data = molecules(z, n)
    batches = [data.batch(np.arange(i, min(i + batch_size, n)), None) for i in range(0, n, batch_size)]
    ens32 = [b for i in range(0, n, batch_size)  # the same 32-molecule batches, in the ensemble's layout
             for _, _, b in ens.iter_batches(data.subset(np.arange(i, min(i + batch_size, n))), memory_budget=1 << 62)]
    tiny = SchNetEnsemble.from_models(
        members(k, ModelConfig(n_atom_basis=8, n_filters=8, n_interactions=1, rbf_max=3.0)),
        [ModelInfo("kcal/mol", [1, 6, 8])] * k)
    big = molecules(z, 20 * n, seed=1)
    fns = {
        "single": lambda: [models[0](b) for b in batches],
        "singles": lambda: [m(b) for m in models for b in batches],
        "ensemble_b32": lambda: [ens.evaluate_batch(b) for b in ens32],
        "predict": lambda: ens.predict(data),
        "loop": lambda: [ens.evaluate_batch(b, loop=True) for b in ens32],
        "tiny_predict": lambda: tiny.predict(big),
    }
    t = timed(fns, repeats)
    rates = {name: (20 * n if name == "tiny_predict" else n) / sec for name, sec in t.items()}
    rates["ratio"] = t["predict"] / t["singles"]
    rates["ratio_b32"] = t["ensemble_b32"] / t["singles"]
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per variant (median reported)")
    ap.add_argument("--k", type=int, default=5, help="ensemble members")
    ap.add_argument("--molecules", type=int, default=128, help="molecules per timed pass")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    results = {name: measure(z, args.k, args.molecules, args.repeats) for name, z in SIZES.items()}
    if args.json:
        print(json.dumps({"results": results, "k": args.k, "torch": torch.__version__,
                          "threads": torch.get_num_threads()}))
        return
    t = Table(title=f"ensemble of k={args.k} paper-size SchNets, energies + forces, molecules/s "
                    f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
                    f"{platform.processor() or platform.machine()})")
    for c in ("molecule", "atoms", "1 model", f"{args.k} single passes", "ensemble, batch 32", "ensemble predict()",
              "member loop", "ratio (target ≤ 1.2)", "tiny predict() (overhead bound)"):
        t.add_column(c, justify="left" if c == "molecule" else "right")
    for name, r in results.items():
        t.add_row(name, str(len(SIZES[name])), f"{r['single']:.0f}", f"{r['singles']:.0f}", f"{r['ensemble_b32']:.0f}",
                  f"{r['predict']:.0f}", f"{r['loop']:.0f}", f"{r['ratio']:.2f} ({r['ratio_b32']:.2f} at batch 32)",
                  f"{r['tiny_predict']:.0f}")
    Console().print(t)


if __name__ == "__main__":
    main()
