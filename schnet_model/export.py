"""A standalone exported ensemble: ``torch.export`` program + manifest + a loader that needs only torch.

``sweep ensemble [SWEEP] --export DIR`` writes

- ``ensemble.pt2``: a ``torch.export`` ExportedProgram of all k members at once, taking atomic
  numbers ``Z`` [n] int64 and positions ``R`` [n, 3] float64 in Å (any n ≥ 3: the atom count is a
  dynamic dimension) and returning, in the ensemble's energy unit (forces per Å):
  ``energy`` [] (member mean), ``forces`` [n, 3], ``energy_std`` [], ``forces_std`` [n, 3],
  ``forces_std_atom`` [n] (norm of the per-component stds), ``members_energy`` [k],
  ``members_forces`` [k, n, 3]; stds with ddof = 1 and the calibration scales applied;
- ``manifest.json``: format, units, elements, k, the calibration scales, the architecture, the
  torch version it was exported with, the outputs, and the sha256 of every file;
- ``load_ensemble.py``: a loader using only the standard library and torch: it checks every
  sha256 before loading, refuses an archive holding pickled objects (the ExportedProgram format
  stores tensors as raw bytes and the graph as JSON) and refuses unseen elements.

Energies are summed in float64 (the per-element offsets of a molecule reach −10⁵ kcal/mol); the
weights are float64 by default (``dtype``), which is what MD energy conservation wants.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from schnet_model.ensemble import STD_DDOF, Ensemble
from schnet_model.files import atomic_dir, check_destination, sha256
from schnet_model.nn.core import Graph
from schnet_model.nn.family import energies_forces
from schnet_model.units import force_unit

FORMAT, VERSION = "sweep-schnet-ensemble-export", 1
PROGRAM, MANIFEST, LOADER = "ensemble.pt2", "manifest.json", "load_ensemble.py"
OUTPUTS = ("energy", "forces", "energy_std", "forces_std", "forces_std_atom", "members_energy", "members_forces")
MIN_ATOMS = 3  # the exported pair count n(n−1)/2 must stay a dynamic size (> 1)


class ExportableEnsemble(torch.nn.Module):
    """The ensemble as one module of plain tensor operations (SchNet: dense filters, explicit forces; PaiNN: forces by
    autograd, traced to their backward operations by :func:`_aten_program`) for ``torch.export``."""

    def __init__(self, ens: Ensemble, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.keys = list(ens.params)
        self.config = ens.config
        for i, key in enumerate(self.keys):
            v = ens.params[key].detach().cpu()
            self.register_buffer(f"p{i}", v if v.dtype == torch.float64 else v.to(dtype))
        self.register_buffer("scales", torch.tensor([ens.calibration.energy_scale, ens.calibration.forces_scale],
                                                    dtype=torch.float64))

    def forward(self, Z: torch.Tensor, R: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        """Outputs for atoms ``Z`` [n] at ``R`` [n, 3] Å with every pair i < j once (``pi``, ``pj`` [n(n−1)/2])."""
        p = {key: getattr(self, f"p{i}") for i, key in enumerate(self.keys)}
        g = Graph(Z[None], R[None], torch.zeros_like(Z)[None], 1, pi[None], pj[None])
        e, f = energies_forces(p, self.config, g, True, filters="dense")  # [k, 1] float64, [k, n, 3]
        e, f = e[:, 0], f.to(torch.float64)
        f_std = f.std(0, correction=STD_DDOF) * self.scales[1]  # [n, 3]
        return (e.mean(), f.mean(0), e.std(correction=STD_DDOF) * self.scales[0], f_std,
                torch.linalg.vector_norm(f_std, dim=-1), e, f)


def all_pairs(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair i < j of n atoms once: ([n(n−1)/2], [n(n−1)/2]) int64 (a dynamic size under ``torch.export``)."""
    pairs = torch.ones(n, n, dtype=torch.bool, device=device).triu(1).nonzero().T  # [2, n(n−1)/2]
    torch._check(pairs.shape[1] >= MIN_ATOMS)
    return pairs[0], pairs[1]


class _AtenProgram(torch.nn.Module):
    """A module's forward as a graph of aten operations, its buffers held here and passed in."""

    def __init__(self, graph: torch.fx.GraphModule, buffers: list[torch.Tensor]) -> None:
        super().__init__()
        self.graph_module = graph
        for i, b in enumerate(buffers):
            self.register_buffer(f"b{i}", b)
        self.n = len(buffers)

    def forward(self, Z: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pi, pj = all_pairs(Z.shape[0], Z.device)
        return self.graph_module(Z, R, pi, pj, *(getattr(self, f"b{i}") for i in range(self.n)))


def _aten_program(module: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> _AtenProgram:
    """``module``'s forward traced by torch's ``make_fx`` (symbolic sizes), autograd included: forces taken by
    ``torch.autograd.grad`` become the backward's own operations, which ``torch.export`` takes as they are (it
    cannot trace ``autograd.grad`` itself)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    names = [name for name, _ in module.named_buffers()]
    buffers = [b for _, b in module.named_buffers()]

    def call(Z: torch.Tensor, R: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor, *values: torch.Tensor
             ) -> tuple[torch.Tensor, ...]:
        return torch.func.functional_call(module, dict(zip(names, values, strict=True)), (Z, R, pi, pj))

    pi, pj = all_pairs(example[0].shape[0], example[0].device)
    return _AtenProgram(make_fx(call, tracing_mode="symbolic")(*example, pi, pj, *buffers), buffers)


def export_ensemble(ens: Ensemble, out: str | Path, dtype: torch.dtype = torch.float64, max_atoms: int = 10_000,
                    overwrite: bool = False) -> Path:
    """Export ``ens`` to directory ``out`` (written atomically); the directory. An existing export is replaced only
    with ``overwrite``, anything else never."""
    check_destination(out, "export directory", PROGRAM, overwrite)
    n = 9
    example = (torch.full((n,), ens.elements[0], dtype=torch.int64), torch.randn(n, 3, dtype=torch.float64) * 1.5)
    module = _aten_program(ExportableEnsemble(ens, dtype).eval(), example)
    atoms = torch.export.Dim("n_atoms", min=MIN_ATOMS, max=max_atoms)
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes={"Z": {0: atoms}, "R": {0: atoms}})
    with atomic_dir(out) as tmp:
        torch.export.save(program, str(tmp / PROGRAM))
        (tmp / LOADER).write_text(LOADER_SOURCE)
        manifest = {
            "format": FORMAT, "version": VERSION, "torch": torch.__version__.split("+")[0],
            "inputs": {"Z": "[n_atoms] int64 atomic numbers", "R": "[n_atoms, 3] float64 positions in Å",
                       "n_atoms": f"{MIN_ATOMS} to {max_atoms}"},
            "outputs": list(OUTPUTS), "energy_unit": ens.energy_unit, "force_unit": force_unit(ens.energy_unit),
            "length_unit": "Å", "elements": ens.elements, "k": ens.k, "std_ddof": STD_DDOF,
            "calibration": {"energy_scale": ens.calibration.energy_scale, "forces_scale": ens.calibration.forces_scale,
                            "method": ens.calibration.method},
            "weights_dtype": str(dtype).replace("torch.", ""), "model": ens.config.model_dump(), "meta": ens.meta,
            "files": {name: sha256(tmp / name) for name in (PROGRAM, LOADER)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return Path(out)


# The loader shipped beside the program: standard library + torch only (no sweep, no numpy).
LOADER_SOURCE = '''"""Load an ensemble (SchNet or PaiNN) exported by `sweep ensemble --export DIR` (needs only torch).

    from load_ensemble import load
    ens = load("DIR")
    out = ens(Z, R)   # Z [n] int64 atomic numbers, R [n, 3] float64 Å (tensors or nested lists)
    out["energy"], out["forces"], out["energy_std"], out["forces_std_atom"].max()

Every file's sha256 is checked against manifest.json before anything is loaded, and the program archive
must hold no pickled objects (tensors are raw bytes, the graph JSON).
"""

import hashlib
import json
from pathlib import Path

import torch


class ExportError(ValueError):
    """The export directory or the input is not what the manifest says."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _no_pickles(path):
    """Refuse an archive that would make torch.export.load unpickle: weights or constants stored with pickle, or
    sample inputs that torch.load(weights_only=True) rejects (torch.export.load then retries without it)."""
    import io
    import pickle  # only for its exception type: nothing is unpickled
    import zipfile

    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(("model_weights_config.json", "model_constants_config.json")):
                config = json.loads(z.read(name)).get("config", {})
                if any(entry.get("use_pickle") for entry in config.values()):
                    raise ExportError(f"{path}: {name} stores tensors with pickle; refusing to load")
            elif "/sample_inputs/" in name:
                try:
                    torch.load(io.BytesIO(z.read(name)), weights_only=True)
                except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:  # weights_only refused it
                    raise ExportError(f"{path}: {name} is not a plain tensor file ({type(e).__name__}); refusing to load")


class Ensemble:
    """The exported program with the manifest's checks; call it with Z and R."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        for name, digest in self.manifest["files"].items():
            if _sha256(self.dir / name) != digest:
                raise ExportError(f"{self.dir / name}: sha256 differs from manifest.json (the file changed)")
        _no_pickles(self.dir / "ensemble.pt2")
        self.program = torch.export.load(str(self.dir / "ensemble.pt2")).module()
        self.elements = set(self.manifest["elements"])
        self.outputs = self.manifest["outputs"]

    def __call__(self, Z, R):
        Z = torch.as_tensor(Z, dtype=torch.int64)
        R = torch.as_tensor(R, dtype=torch.float64)
        unseen = sorted(set(Z.tolist()) - self.elements)
        if unseen:
            raise ExportError(f"elements not seen in training: {unseen}; the ensemble knows {sorted(self.elements)}")
        if Z.ndim != 1 or R.shape != (len(Z), 3) or len(Z) < 3:
            raise ExportError(f"expected Z [n] and R [n, 3] with n >= 3, got {tuple(Z.shape)} and {tuple(R.shape)}")
        with torch.no_grad():
            return dict(zip(self.outputs, self.program(Z, R)))


def load(directory):
    return Ensemble(directory)
'''


__all__ = ["ExportableEnsemble", "export_ensemble"]
