"""One measurement for ``benchmarks/compare.py``: one implementation, one batch file, in a subprocess.

    python benchmarks/peer_worker.py --impl {sweep,schnetpack,pyg} --data FILE.npz [--threads N] [--model painn]

Runs under the project's venv (``sweep``) or the peer venv (``schnetpack``, ``pyg``); imports
only what its implementation needs. Builds the paper-sized SchNet of that implementation
(64 features, 64 filters, 3 interactions, 300 Gaussians 0–29.9 Å every 0.1 Å, γ = 10 Å⁻²,
atom-wise 64 → 32 → 1 head), then times passes over the same batches: a training step
(energy + forces with create_graph, loss ρ·ΔE² + (1/n)Σ‖ΔF‖², backward, Adam) and inference
(energy + forces, no create_graph). Prints one JSON line: molecules/s (wall clock, median of
the passes), molecules per CPU-second (``*_cpu``: with one thread, insensitive to other load on
the machine), peak RSS and its growth during the timed work.

``--model painn``: PaiNN at the paper's MD17 size instead (128 features, 3 blocks, 20 radial functions, 5 Å cosine
cutoff, separate filters, atom-wise 128 → 64 → 1), this project's (``sweep``) against schnetpack's; both take the
same pair list, the batch's pairs within the cutoff (both directions), and forces by autograd.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time

import numpy as np
import torch

N_RBF, SPACING, GAMMA = 300, 0.1, 10.0
RHO, LR = 0.01, 1e-4


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def load_batches(path: str) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    n = int(data["n_batches"])
    keys = ("Z", "R", "mol", "idx_i", "idx_j", "n_atoms", "E", "F")
    return [{k: data[f"{b}_{k}"] for k in keys} for b in range(n)]


# -- this project ------------------------------------------------------------------------
def build_sweep(batches):
    from schnet_model import ModelConfig, SchNet

    model = SchNet(ModelConfig())
    model.compile_after = 0  # steady state: the fused kernels compile during the warm-up batches
    return _sweep_steps(model, batches)


def _sweep_steps(model, batches):
    """This project's training step (the trainer's loss, torch's fused Adam) and inference on ``batches``."""
    from schnet_model.data.batch import Batch
    from schnet_model.training.loss import energy_force_loss
    from schnet_model.training.optim import make_adam

    opt = make_adam(model.parameters(), LR)  # what the trainer uses: torch's fused Adam
    bs = [Batch(**{k: torch.from_numpy(v) for k, v in b.items()}) for b in batches]

    def train(b):
        pred = model(b, forces=True, create_graph=True)
        loss = energy_force_loss(pred, b, RHO, True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(b):
        return model(b, forces=True).forces

    return model, bs, train, infer


def _loss(energy, forces, E, F, mol, n_atoms):
    e_err = (energy.double() - E) ** 2
    f_sq = ((forces - F) ** 2).sum(1).double()
    per_mol = torch.zeros_like(e_err).index_add_(0, mol, f_sq) / n_atoms
    return (RHO * e_err + per_mol).mean()


# -- schnetpack 2.1.1 --------------------------------------------------------------------
def build_schnetpack(batches):
    import schnetpack as spk

    rbf = spk.nn.GaussianRBF(n_rbf=N_RBF, cutoff=SPACING * (N_RBF - 1))  # centres 0 … 29.9 Å
    rbf.widths.fill_(math.sqrt(0.5 / GAMMA))  # exp(−0.5 (d−μ)²/σ²) with σ² = 1/(2γ): γ = 10 Å⁻²
    rep = spk.representation.SchNet(n_atom_basis=64, n_interactions=3, radial_basis=rbf,
                                    cutoff_fn=spk.nn.CosineCutoff(30.0), n_filters=64)
    return _schnetpack_nnp(rep, 64, batches)


def _schnetpack_nnp(rep, n_in: int, batches):
    """schnetpack's NeuralNetworkPotential around ``rep`` (atom-wise energy, forces by autograd), Adam, and its
    inputs for ``batches``."""
    import schnetpack as spk
    import schnetpack.properties as props

    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=n_in, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
    )
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    bs = []
    for b in batches:
        bs.append({
            props.Z: torch.from_numpy(b["Z"]), props.R: torch.from_numpy(b["R"]),
            props.idx_m: torch.from_numpy(b["mol"]), props.idx_i: torch.from_numpy(b["idx_i"]),
            props.idx_j: torch.from_numpy(b["idx_j"]), props.n_atoms: torch.from_numpy(b["n_atoms"]),
            props.offsets: torch.zeros(len(b["idx_i"]), 3),
            "E": torch.from_numpy(b["E"]), "F": torch.from_numpy(b["F"]),
        })

    def run(b):
        inp = {k: (v.clone() if k == props.R else v) for k, v in b.items()}
        return model(inp)

    def train(b):
        model.train()
        out = run(b)
        loss = _loss(out["energy"], out["forces"], b["E"], b["F"], b[props.idx_m], b[props.n_atoms])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(b):
        model.eval()
        return run(b)["forces"]

    return model, bs, train, infer


# -- PyTorch Geometric -------------------------------------------------------------------
def build_pyg(batches):
    from torch_geometric.nn.models import SchNet as PygSchNet

    state = {}

    def graph(pos, batch):  # our pair list (all pairs), no radius_graph (needs torch-cluster/pyg-lib)
        ei = state["edge_index"]
        return ei, (pos[ei[0]] - pos[ei[1]]).norm(dim=-1)

    model = PygSchNet(hidden_channels=64, num_filters=64, num_interactions=3, num_gaussians=N_RBF,
                      cutoff=30.0, interaction_graph=graph, readout="add")
    model.distance_expansion.offset.copy_(torch.arange(N_RBF) * SPACING)
    model.distance_expansion.coeff = -GAMMA
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    bs = []
    for b in batches:
        bs.append({
            "z": torch.from_numpy(b["Z"]), "pos": torch.from_numpy(b["R"]), "batch": torch.from_numpy(b["mol"]),
            # PyG flows source (row 0) → target (row 1): j → i
            "edge_index": torch.stack([torch.from_numpy(b["idx_j"]), torch.from_numpy(b["idx_i"])]),
            "E": torch.from_numpy(b["E"]), "F": torch.from_numpy(b["F"]), "n_atoms": torch.from_numpy(b["n_atoms"]),
        })

    def run(b, create_graph):
        state["edge_index"] = b["edge_index"]
        pos = b["pos"].clone().requires_grad_(True)
        energy = model(b["z"], pos, b["batch"]).squeeze(-1)
        (g,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -g

    def train(b):
        energy, forces = run(b, True)
        loss = _loss(energy, forces, b["E"], b["F"], b["batch"], b["n_atoms"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(b):
        return run(b, False)[1]

    return model, bs, train, infer


# -- PaiNN --------------------------------------------------------------------------------
PAINN_CUTOFF = 5.0


def within_cutoff(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The batches with their pair lists cut to pairs within PaiNN's cutoff (the same work for every
    implementation)."""
    out = []
    for b in batches:
        d = np.linalg.norm(b["R"][b["idx_j"]] - b["R"][b["idx_i"]], axis=1)
        keep = d < PAINN_CUTOFF
        out.append({**b, "idx_i": b["idx_i"][keep], "idx_j": b["idx_j"][keep]})
    return out


def build_sweep_painn(batches):
    from schnet_model import PaiNN, PaiNNConfig

    model = PaiNN(PaiNNConfig(cutoff=PAINN_CUTOFF))
    model.compile_after = 0  # steady state: the compiled blocks compile during the warm-up batches
    return _sweep_steps(model, within_cutoff(batches))


def build_schnetpack_painn(batches):
    import schnetpack as spk

    rep = spk.representation.PaiNN(n_atom_basis=128, n_interactions=3,
                                   radial_basis=spk.nn.BesselRBF(n_rbf=20, cutoff=PAINN_CUTOFF),
                                   cutoff_fn=spk.nn.CosineCutoff(PAINN_CUTOFF))
    return _schnetpack_nnp(rep, 128, within_cutoff(batches))


BUILDERS = {"sweep": build_sweep, "schnetpack": build_schnetpack, "pyg": build_pyg}
PAINN_BUILDERS = {"sweep": build_sweep_painn, "schnetpack": build_schnetpack_painn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=sorted(BUILDERS), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the batches per mode")
    ap.add_argument("--modes", default="train,inference")
    ap.add_argument("--model", choices=("schnet", "painn"), default="schnet")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = load_batches(args.data)
    model, bs, train, infer = (PAINN_BUILDERS if args.model == "painn" else BUILDERS)[args.impl](batches)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_mols = sum(len(b["n_atoms"]) for b in batches)
    rss0 = rss_mib()
    out = {"impl": args.impl, "params": n_params, "threads": torch.get_num_threads()}
    for mode in args.modes.split(","):
        fn = train if mode == "train" else infer
        for b in bs[:2]:  # warm-up
            fn(b)
        rates, cpu_rates = [], []
        for _ in range(args.passes):
            t0, c0 = time.perf_counter(), time.process_time()
            for b in bs:
                fn(b)
            rates.append(n_mols / (time.perf_counter() - t0))
            cpu_rates.append(n_mols / (time.process_time() - c0))
        out[mode] = statistics.median(rates)
        out[mode + "_cpu"] = statistics.median(cpu_rates)  # per CPU-second: robust to other load
        out[mode + "_passes"] = rates
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_growth_mib"] = out["peak_rss_mib"] - rss0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
