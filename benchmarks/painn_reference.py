"""schnetpack 2.1.1's PaiNN energies and forces, with their weights, for tests/test_painn.py to hold our PaiNN to.

    python benchmarks/painn_reference.py            # makes benchmarks/.venv-peers once (benchmarks/compare.py)

Runs schnetpack in the peers' venv (its install quirks are benchmarks/compare.py's) on the first frames of the shipped
ethanol dataset, for two configurations (separate filters; shared filters with a cutoff shorter than the molecule),
and writes ``tests/data/painn_schnetpack_reference.npz``: every parameter under ``CONFIG/param/NAME`` (schnetpack's
names), the inputs, energies [n_mols] and forces [n_mols, n_atoms, 3] in float64 (computed in float32 by schnetpack),
and each configuration as JSON. The tests need only that file (CI has no schnetpack).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "tests" / "data" / "painn_schnetpack_reference.npz"
CONFIGS = {
    "separate": {"n_atom_basis": 32, "n_interactions": 3, "n_rbf": 20, "cutoff": 5.0, "shared_filters": False},
    "shared_short": {"n_atom_basis": 16, "n_interactions": 2, "n_rbf": 12, "cutoff": 2.0, "shared_filters": True},
}

PEER_SCRIPT = r'''
import json, sys
import numpy as np
import torch
import schnetpack as spk
import schnetpack.properties as props

configs, data_path, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
d = np.load(data_path)
Z = d["z"].astype(np.int64)
frames = d["R"][:4]
arrays = {"Z": Z, "R": frames}
for name, c in configs.items():
    torch.manual_seed(7)
    rep = spk.representation.PaiNN(
        n_atom_basis=c["n_atom_basis"], n_interactions=c["n_interactions"],
        radial_basis=spk.nn.BesselRBF(n_rbf=c["n_rbf"], cutoff=c["cutoff"]),
        cutoff_fn=spk.nn.CosineCutoff(c["cutoff"]), shared_filters=c["shared_filters"])
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=c["n_atom_basis"], output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])
    with torch.no_grad():  # biases are zero at initialisation: random ones, so that every term is tested
        for key, v in model.state_dict().items():
            if key.endswith("bias"):
                v.copy_(0.1 * torch.randn_like(v))
    n = len(Z)
    ii, jj = np.nonzero(~np.eye(n, dtype=bool))  # every ordered pair; the cutoff function zeroes far ones
    batch = {
        props.Z: torch.tensor(np.tile(Z, len(frames))),
        props.R: torch.tensor(frames.reshape(-1, 3), dtype=torch.float32),
        props.idx_i: torch.tensor(np.concatenate([ii + m * n for m in range(len(frames))])),
        props.idx_j: torch.tensor(np.concatenate([jj + m * n for m in range(len(frames))])),
        props.offsets: torch.zeros(len(frames) * len(ii), 3),
        props.n_atoms: torch.full((len(frames),), n),
        props.idx_m: torch.repeat_interleave(torch.arange(len(frames)), n),
    }
    res = model(batch)
    arrays[f"{name}/energy"] = res["energy"].detach().double().numpy()
    arrays[f"{name}/forces"] = res["forces"].detach().double().numpy().reshape(len(frames), n, 3)
    arrays[f"{name}/config"] = np.array(json.dumps(c))
    for key, v in model.state_dict().items():
        arrays[f"{name}/param/{key}"] = v.detach().numpy()
np.savez_compressed(out, **arrays)
print("schnetpack", spk.__version__, "torch", torch.__version__, "->", out)
'''


def main() -> None:
    sys.path.insert(0, str(HERE))
    from compare import PEER_PY, ensure_peers

    ensure_peers()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = ROOT / "data" / "ethanol_gfn2xtb_500K.npz"
    subprocess.run([str(PEER_PY), "-c", PEER_SCRIPT, json.dumps(CONFIGS), str(data), str(OUT)], check=True)


if __name__ == "__main__":
    main()
