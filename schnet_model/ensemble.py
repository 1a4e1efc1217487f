"""A vectorised ensemble of k SchNet members: one pass evaluates all members.

The members' weights are stacked along a leading member axis ``k`` and the SchNet forward is
written here, functionally, from the state-dict layout (``embedding.weight``,
``interactions.{l}.in2f.weight``, ``…filter_net.0.0.weight`` …, ``offsets.atomref``). It does not
call :meth:`SchNet.forward`; the tests check that both agree. What is shared between members is
computed once per batch: unordered pairs, distances, their sort, the Gaussians. Per batch:

- **filters** depend on the pair distance only, so they are computed once per unordered pair
  (i < j) and used in both directions. Pairs are sorted by distance and processed in chunks;
  each chunk multiplies only the window of Gaussians that are non-negligible for its distances
  (centres farther than ``r = sqrt(ln(2¹⁰/eps)/γ)`` from every distance are dropped: each dropped
  value is below eps·2⁻¹⁰ of the largest), and the first filter layer of **all members and all
  interaction blocks** is one matrix product ``[pairs, window] × [window, k·L·F]``; the second
  layer is one batched product over the k·L (member, block) pairs. The filters' derivatives
  ``dW/dd`` come from the same products (forward mode).
- **atom-wise layers** are batched matmuls over members (``torch.baddbmm``) on ``[k, atoms, ·]``.
- **forces**: one backward pass through the atom-wise part gives ``∂E_m/∂W`` for every member,
  ``∂E_m/∂d_p = Σ ⟨∂E_m/∂W_p, W'_p⟩`` and ``F = −∂E/∂R`` by the chain rule through
  ``d = |R_j − R_i|`` — per member, with no autograd graph through the Gaussians.

Std convention: ``std`` is the **sample standard deviation over the k members with
ddof = STD_DDOF = 1** (``torch.std(correction=1)``, ``np.std(ddof=1)``), for energies per
molecule and for each force component; ``forces_std_norm`` of an atom is
``sqrt(σ_x² + σ_y² + σ_z²)`` of its component stds (the root of the trace of the members'
force covariance), summarised per molecule by its max and mean over atoms. A stored
:class:`~schnet_model.calibration.Calibration` multiplies these stds (``calibrated=True``).

Memory: molecules are evaluated in batches whose estimated footprint stays under
``memory_budget`` bytes (a molecule larger than the budget is evaluated alone), positions are
never padded, and pair lists are built per batch, vectorised over molecules of equal size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schnet_model.calibration import Calibration
from schnet_model.config import ModelConfig
from schnet_model.data.molecules import Molecules
from schnet_model.data.neighbors import all_pairs, cutoff_pairs_many
from schnet_model.model_dir import ModelInfo, ModelLoadError, load_model, save_model
from schnet_model.nn.activations import shifted_softplus
from schnet_model.nn.schnet import SchNet
from schnet_model.units import canonical_energy_unit, energy_factor, force_unit

STD_DDOF = 1  # the one std convention: sample std over members (Bessel-corrected)
FORMAT, VERSION, MANIFEST = "sweep-schnet-ensemble", 1, "ensemble.json"
DEFAULT_MEMORY_BUDGET = 256 << 20  # bytes of autograd state per batch (estimate; larger batches run slower on CPU)
_CHUNK_ATOMS = 1 << 18  # atoms per neighbour-search chunk (cutoff models)


class EnsembleError(ValueError):
    """An ensemble that cannot be built or applied (one line)."""


# -- state dicts → stacked parameters ----------------------------------------------------------
def expected_layout(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of a SchNet with ``cfg`` (the layout the functional forward reads)."""
    A, Fi, R = cfg.n_atom_basis, cfg.n_filters, cfg.n_rbf
    H = cfg.n_output_hidden or max(1, A // 2)
    out: dict[str, tuple[int, ...]] = {"embedding.weight": (cfg.max_z, A), "rbf.centers": (R,)}
    for i in range(cfg.n_interactions):
        p = f"interactions.{i}."
        out |= {p + "in2f.weight": (Fi, A),
                p + "filter_net.0.0.weight": (Fi, R), p + "filter_net.0.0.bias": (Fi,),
                p + "filter_net.1.weight": (Fi, Fi), p + "filter_net.1.bias": (Fi,),
                p + "f2out.0.0.weight": (A, Fi), p + "f2out.0.0.bias": (A,),
                p + "f2out.1.weight": (A, A), p + "f2out.1.bias": (A,)}
    out |= {"output.0.0.weight": (H, A), "output.0.0.bias": (H,), "output.1.weight": (1, H), "output.1.bias": (1,),
            "offsets.atomref": (cfg.max_z,), "offsets.scale": ()}
    return out


def stack_states(states: list[dict[str, torch.Tensor]], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Stack k member state dicts into the ensemble's parameters (weights transposed for ``x @ W``).

    Returns a flat dict: ``emb`` [k, max_z, A], ``centers`` [n_rbf], ``filt1_w`` [k, n_rbf, L·F],
    ``filt1_b`` [k, 1, L·F], ``filt2_w`` [k, L, F, F], ``filt2_b`` [k, L, 1, F], per block l ``in2f.l``
    [k, A, F], ``f2out1_w.l`` [k, F, A], ``f2out1_b.l``, ``f2out2_w.l`` [k, A, A], ``f2out2_b.l``,
    ``out1_w`` [k, A, H], ``out1_b``, ``out2_w`` [k, H, 1], ``out2_b`` [k, 1, 1], ``atomref``
    [k, max_z] float64, ``scale`` [k] float64.
    """
    layout = expected_layout(cfg)
    for m, st in enumerate(states):
        missing, extra = sorted(set(layout) - set(st)), sorted(set(st) - set(layout))
        if missing or extra:
            raise EnsembleError(f"member {m}: state dict does not match the SchNet layout (missing {missing[:3]}, "
                                f"unexpected {extra[:3]})")
        for key, shape in layout.items():
            if tuple(st[key].shape) != shape:
                raise EnsembleError(f"member {m}: {key} has shape {tuple(st[key].shape)}, expected {shape}")
    if not all(torch.equal(s["rbf.centers"], states[0]["rbf.centers"]) for s in states):
        raise EnsembleError("members use different radial basis centres")

    def stk(key: str, transpose: bool = False, bias: bool = False) -> torch.Tensor:
        t = torch.stack([s[key].detach() for s in states])  # [k, ...]
        if transpose:
            t = t.transpose(1, 2)
        if bias:
            t = t[:, None, :]
        return t.contiguous()

    L = cfg.n_interactions
    p: dict[str, torch.Tensor] = {"emb": stk("embedding.weight"), "centers": states[0]["rbf.centers"].detach().clone()}
    p["filt1_w"] = torch.cat([stk(f"interactions.{i}.filter_net.0.0.weight", transpose=True) for i in range(L)], 2)
    p["filt1_b"] = torch.cat([stk(f"interactions.{i}.filter_net.0.0.bias", bias=True) for i in range(L)], 2)
    p["filt2_w"] = torch.stack([stk(f"interactions.{i}.filter_net.1.weight", True) for i in range(L)], 1)  # [k, L, F, F]
    p["filt2_b"] = torch.stack([stk(f"interactions.{i}.filter_net.1.bias", bias=True) for i in range(L)], 1)  # [k, L, 1, F]
    for i in range(L):
        q = f"interactions.{i}."
        p[f"in2f.{i}"] = stk(q + "in2f.weight", transpose=True)
        p[f"f2out1_w.{i}"], p[f"f2out1_b.{i}"] = stk(q + "f2out.0.0.weight", True), stk(q + "f2out.0.0.bias", bias=True)
        p[f"f2out2_w.{i}"], p[f"f2out2_b.{i}"] = stk(q + "f2out.1.weight", True), stk(q + "f2out.1.bias", bias=True)
    p["out1_w"], p["out1_b"] = stk("output.0.0.weight", True), stk("output.0.0.bias", bias=True)
    p["out2_w"], p["out2_b"] = stk("output.1.weight", True), stk("output.1.bias", bias=True)
    p["atomref"] = stk("offsets.atomref").to(torch.float64)
    p["scale"] = stk("offsets.scale").to(torch.float64).reshape(-1)
    return p


# -- the functional forward --------------------------------------------------------------------
def truncation_radius(gamma: float, dtype: torch.dtype) -> float:
    """Distance (Å) beyond which a Gaussian ``exp(−γ Δ²)`` is below ``eps(dtype)·2⁻¹⁰`` and is left out."""
    return math.sqrt(math.log(2.0**10 / torch.finfo(dtype).eps) / gamma)


def pair_filters(p: dict[str, torch.Tensor], cfg: ModelConfig, d: torch.Tensor, deriv: bool, chunk: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Filters of every member and block for pair distances ``d`` [P] (sorted ascending, Å).

    Returns (W [k, L, P, F], dW/dd [k, L, P, F] or None), cutoff included.
    """
    k, L, Fi = p["emb"].shape[0], cfg.n_interactions, cfg.n_filters
    kL, P = k * L, d.numel()
    # μ_k = k·spacing in the compute dtype (the float32 ``rbf.centers`` buffer cast up would be off by ~1e-6 Å)
    centers = torch.arange(cfg.n_rbf, dtype=d.dtype, device=d.device) * cfg.rbf_spacing  # [n_rbf]
    W1 = p["filt1_w"].permute(1, 0, 2).reshape(-1, kL * Fi)  # [n_rbf, k·L·F] columns (member, block, filter)
    b1 = p["filt1_b"].reshape(1, kL * Fi)
    W2, b2 = p["filt2_w"].reshape(kL, Fi, Fi), p["filt2_b"].reshape(kL, 1, Fi)
    W = d.new_empty(kL, P, Fi)
    Wd = d.new_empty(kL, P, Fi) if deriv else None
    if P:
        r = truncation_radius(cfg.gamma, d.dtype)
        starts = list(range(0, P, chunk))
        ends = [min(s0 + chunk, P) for s0 in starts]
        lo = d[torch.tensor(starts, device=d.device)]
        hi = d[torch.tensor(ends, device=d.device) - 1]
        k0s = torch.searchsorted(centers, lo - r).tolist()
        k1s = torch.searchsorted(centers, hi + r, right=True).tolist()
        for p0, p1, k0, k1 in zip(starts, ends, k0s, k1s, strict=True):
            if k1 > k0:
                delta = d[p0:p1, None] - centers[k0:k1]  # [C, K]
                g = torch.exp(delta * delta * -cfg.gamma)  # [C, K]
                a = torch.addmm(b1, g, W1[k0:k1])  # [C, k·L·F]
            else:  # every Gaussian negligible (beyond the basis)
                g = delta = None
                a = b1.expand(p1 - p0, -1)
            s = shifted_softplus(a).view(p1 - p0, kL, Fi).transpose(0, 1)  # [k·L, C, F]
            W[:, p0:p1] = torch.baddbmm(b2, s, W2)
            if Wd is not None:
                if g is None:
                    Wd[:, p0:p1] = 0.0
                    continue
                ad = torch.mm(g * delta * (-2.0 * cfg.gamma), W1[k0:k1])  # dA/dd [C, k·L·F]
                sd = (torch.sigmoid(a) * ad).view(p1 - p0, kL, Fi).transpose(0, 1)  # d ssp(A)/dd
                Wd[:, p0:p1] = torch.bmm(sd, W2)
    if cfg.cutoff is not None:
        inside = (d < cfg.cutoff).to(d.dtype)
        fc = (0.5 * (torch.cos(d * (math.pi / cfg.cutoff)) + 1.0) * inside)[:, None]  # [P, 1]
        if Wd is not None:
            fcd = (-0.5 * math.pi / cfg.cutoff * torch.sin(d * (math.pi / cfg.cutoff)) * inside)[:, None]
            Wd = Wd * fc + W * fcd
        W = W * fc
    return W.view(k, L, P, Fi), (None if Wd is None else Wd.view(k, L, P, Fi))


def member_energies(
    p: dict[str, torch.Tensor],
    cfg: ModelConfig,
    Z: torch.Tensor,  # [n_atoms] int64
    W: torch.Tensor,  # [k, L, P, F] filters of the unordered pairs
    pi: torch.Tensor,  # [P] first atom of each unordered pair
    pj: torch.Tensor,  # [P] second atom
    mol: torch.Tensor,  # [n_atoms] molecule of each atom
    n_mols: int,
) -> torch.Tensor:
    """Energies of every member for every molecule from the pair filters: [k, n_mols] float64."""
    k = p["emb"].shape[0]
    x = torch.index_select(p["emb"], 1, Z)  # [k, n_atoms, A]
    for i in range(cfg.n_interactions):
        h = torch.bmm(x, p[f"in2f.{i}"])  # [k, n_atoms, F]
        w = W[:, i]  # [k, P, F]
        conv = torch.zeros_like(h)
        conv = conv.index_add(1, pi, torch.index_select(h, 1, pj) * w)  # j → i
        conv = conv.index_add(1, pj, torch.index_select(h, 1, pi) * w)  # i → j (the same filter)
        v = shifted_softplus(torch.baddbmm(p[f"f2out1_b.{i}"], conv, p[f"f2out1_w.{i}"]))  # [k, n_atoms, A]
        x = x + torch.baddbmm(p[f"f2out2_b.{i}"], v, p[f"f2out2_w.{i}"])
    y = torch.baddbmm(p["out2_b"], shifted_softplus(torch.baddbmm(p["out1_b"], x, p["out1_w"])), p["out2_w"])[..., 0]  # [k, n_atoms]
    e_atom = y.to(torch.float64) * p["scale"][:, None] + p["atomref"][:, Z]  # [k, n_atoms] float64
    return torch.zeros(k, n_mols, dtype=torch.float64, device=y.device).index_add_(1, mol, e_atom)


def member_energies_forces(
    p: dict[str, torch.Tensor], cfg: ModelConfig, batch: dict[str, torch.Tensor], forces: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(energies [k, n_mols] float64, forces [k, n_atoms, 3] or None) of all members in one pass.

    ``batch``: ``Z`` [n_atoms], ``R`` [n_atoms, 3] Å, ``mol`` [n_atoms], ``n_mols``, unordered pairs ``pi``, ``pj`` [P].
    """
    dtype = p["emb"].dtype
    with torch.no_grad():
        R = batch["R"].to(dtype)  # [n_atoms, 3]
        vec = torch.index_select(R, 0, batch["pj"]) - torch.index_select(R, 0, batch["pi"])  # [P, 3]
        d, order = torch.sort(torch.linalg.vector_norm(vec, dim=1))  # [P]
        pi, pj, vec = batch["pi"][order], batch["pj"][order], vec[order]
        W, Wd = pair_filters(p, cfg, d, forces)
    n_mols = int(batch["n_mols"])
    if not forces:
        with torch.no_grad():
            return member_energies(p, cfg, batch["Z"], W, pi, pj, batch["mol"], n_mols), None
    with torch.enable_grad():
        W.requires_grad_(True)
        E = member_energies(p, cfg, batch["Z"], W, pi, pj, batch["mol"], n_mols)
        (gW,) = torch.autograd.grad(E.sum(), W)  # ∂E_m/∂W [k, L, P, F]
    with torch.no_grad():
        dedd = (gW * Wd).sum(dim=(1, 3))  # ∂E_m/∂d_p [k, P]
        fvec = dedd[..., None] * (vec / d[:, None])  # [k, P, 3]; ∂d/∂R_j = u = −∂d/∂R_i
        f = torch.zeros(dedd.shape[0], R.shape[0], 3, dtype=dtype, device=R.device)
        f.index_add_(1, pi, fvec).index_add_(1, pj, -fvec)  # F = −∂E/∂R
    return E.detach(), f


def member_slice(p: dict[str, torch.Tensor], m: int) -> dict[str, torch.Tensor]:
    """The parameters of member ``m`` alone (k = 1), for a plain loop over members."""
    return {key: (v if key == "centers" else v[m : m + 1]) for key, v in p.items()}


# -- batching -----------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _template(n: int, unordered: bool) -> np.ndarray:
    if unordered:
        return np.stack(np.triu_indices(n, 1), axis=1).astype(np.int64)  # [n(n-1)/2, 2], i < j
    return all_pairs(n)


def block_pairs(counts: np.ndarray, unordered: bool = True) -> np.ndarray:
    """All pairs of a block of molecules (sizes ``counts``), batch-global: [n_pairs, 2].

    ``unordered``: each pair once (i < j); else both directions (as :meth:`Molecules.batch`).
    Grouped by molecule in molecule order; vectorised per distinct size (no Python work per molecule).
    """
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [n_mols]
    sizes = np.unique(counts)
    parts, owners = [], []
    for n in sizes:
        sel = np.flatnonzero(counts == n)
        t = _template(int(n), unordered)  # [n_pairs_n, 2]
        parts.append((t[None] + starts[sel][:, None, None]).reshape(-1, 2))
        owners.append(np.repeat(sel, len(t)))
    if len(sizes) == 1:
        return parts[0]
    order = np.argsort(np.concatenate(owners), kind="stable")
    return np.concatenate(parts)[order]


def plan_batches(cost: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges whose summed ``cost`` stays ≤ ``budget`` (≥ 1 item each)."""
    cum = np.cumsum(cost, dtype=np.float64)
    out, start, n = [], 0, len(cost)
    while start < n:
        base = cum[start - 1] if start else 0.0
        stop = max(int(np.searchsorted(cum, base + budget, side="right")), start + 1)
        out.append((start, min(stop, n)))
        start = stop
    return out


# -- predictions -----------------------------------------------------------------------------------
@dataclass
class EnsemblePrediction:
    """Ensemble outputs for N molecules; energies in ``energy_unit``, forces in ``energy_unit``/Å.

    Stds follow ``STD_DDOF`` (sample std over members); ``calibrated`` says whether the stored
    recalibration was applied.
    """

    energy: np.ndarray  # [N] float64, member mean
    energy_std: np.ndarray  # [N]
    forces: np.ndarray | None  # [n_atoms, 3] member mean
    forces_std: np.ndarray | None  # [n_atoms, 3] per component
    forces_std_norm: np.ndarray | None  # [n_atoms] sqrt(σx² + σy² + σz²)
    forces_std_max: np.ndarray | None  # [N] max over the molecule's atoms of forces_std_norm
    forces_std_mean: np.ndarray | None  # [N] mean over the molecule's atoms of forces_std_norm
    atom_ptr: np.ndarray  # [N + 1]
    energy_unit: str
    calibrated: bool = False
    members_energy: np.ndarray | None = None  # [k, N] (only when asked for)
    members_forces: np.ndarray | None = None  # [k, n_atoms, 3]

    @property
    def force_unit(self) -> str:
        return force_unit(self.energy_unit)

    def to_unit(self, unit: str) -> EnsemblePrediction:
        """The same prediction with energies (and forces, stds) converted to ``unit``."""
        unit = canonical_energy_unit(unit)
        f = energy_factor(self.energy_unit, unit)
        if f == 1.0:
            return replace(self, energy_unit=unit)
        mul = lambda a: None if a is None else a * f  # noqa: E731
        return replace(self, energy=self.energy * f, energy_std=self.energy_std * f, forces=mul(self.forces),
                       forces_std=mul(self.forces_std), forces_std_norm=mul(self.forces_std_norm),
                       forces_std_max=mul(self.forces_std_max), forces_std_mean=mul(self.forces_std_mean),
                       members_energy=mul(self.members_energy), members_forces=mul(self.members_forces), energy_unit=unit)


def _summaries(forces_std: np.ndarray, atom_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(norm [n_atoms], per-molecule max [N], per-molecule mean [N]) of per-component force stds."""
    norm = np.sqrt(np.square(forces_std).sum(axis=1))  # [n_atoms]
    starts, counts = atom_ptr[:-1], np.diff(atom_ptr)
    return norm, np.maximum.reduceat(norm, starts), np.add.reduceat(norm, starts) / counts


# -- the ensemble ---------------------------------------------------------------------------------
class SchNetEnsemble:
    """k SchNet members of one architecture, evaluated together.

    Args:
        states: k state dicts (the :class:`SchNet` layout), k ≥ 2.
        config: the members' common architecture.
        energy_unit: the training data's energy unit (forces per Å).
        elements: atomic numbers seen in training.
        calibration: std recalibration (default: none).
        meta: provenance (sweep, trial, run ids) kept in ``ensemble.json``.
    """

    def __init__(self, states: list[dict[str, torch.Tensor]], config: ModelConfig, energy_unit: str, elements: list[int],
                 calibration: Calibration | None = None, meta: dict[str, Any] | None = None) -> None:
        if len(states) < 2:
            raise EnsembleError(f"an ensemble needs at least 2 members (got {len(states)}); its std is undefined otherwise")
        self.config = config
        self.k = len(states)
        self.energy_unit = canonical_energy_unit(energy_unit)
        self.elements = sorted(int(z) for z in elements)
        self.calibration = calibration or Calibration()
        self.meta = dict(meta or {})
        self._states = [{key: v.detach().cpu() for key, v in s.items()} for s in states]
        self.params = stack_states(self._states, config)
        self.device = torch.device("cpu")

    # -- construction and files --
    @classmethod
    def from_models(cls, models: list[SchNet], infos: list[ModelInfo], calibration: Calibration | None = None,
                    meta: dict[str, Any] | None = None) -> SchNetEnsemble:
        """From loaded members (same config, energy unit and elements required)."""
        cfgs = {json.dumps(m.config.model_dump(), sort_keys=True) for m in models}
        if len(cfgs) > 1:
            raise EnsembleError("members have different architectures; an ensemble needs one configuration")
        units = {canonical_energy_unit(i.energy_unit) for i in infos}
        if len(units) > 1:
            raise EnsembleError(f"members were trained in different energy units {sorted(units)}")
        elements = sorted({int(z) for i in infos for z in i.elements})
        return cls([m.state_dict() for m in models], models[0].config, units.pop(), elements, calibration, meta)

    @classmethod
    def from_model_dirs(cls, dirs: list[str | Path], calibration: Calibration | None = None,
                        meta: dict[str, Any] | None = None) -> SchNetEnsemble:
        """From model directories written by :func:`~schnet_model.save_model` (weights verified, never unpickled)."""
        loaded = [load_model(d) for d in dirs]
        return cls.from_models([m for m, _ in loaded], [i for _, i in loaded], calibration, meta)

    def member_models(self) -> list[SchNet]:
        """The members as plain :class:`SchNet` modules (for checks and single-model use)."""
        out = []
        for st in self._states:
            m = SchNet(self.config)
            m.load_state_dict(st, strict=True)
            out.append(m.eval())
        return out

    def save(self, out: str | Path) -> Path:
        """Write the ensemble directory atomically: ``ensemble.json`` + ``member_<i>/`` model directories."""
        out = Path(out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            names = []
            for i, model in enumerate(self.member_models()):
                names.append(f"member_{i}")
                save_model(model, ModelInfo(self.energy_unit, self.elements), tmp / names[-1])
            manifest = {"format": FORMAT, "version": VERSION, "k": self.k, "members": names, "std_ddof": STD_DDOF,
                        "energy_unit": self.energy_unit, "force_unit": force_unit(self.energy_unit), "length_unit": "Å",
                        "elements": self.elements, "model": self.config.model_dump(),
                        "calibration": self.calibration.to_dict(), "meta": self.meta}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SchNetEnsemble:
        """Load an ensemble directory, a downloaded MLflow model of one (``artifacts/ensemble``), or a
        directory of ≥ 2 model directories (uncalibrated)."""
        path = Path(path)
        if not path.is_dir():
            raise EnsembleError(f"{path}: no such directory")
        for cand in (path, path / "artifacts" / "ensemble", path / "ensemble"):
            if (cand / MANIFEST).is_file():
                return cls._load_manifest(cand).to(device)
        members = sorted(d for d in path.iterdir() if (d / "config.json").is_file() and (d / "weights.safetensors").is_file())
        if len(members) >= 2:
            try:
                return cls.from_model_dirs(members, meta={"source": str(path)}).to(device)
            except ModelLoadError as e:
                raise EnsembleError(str(e)) from e
        raise EnsembleError(f"{path}: not an ensemble (no {MANIFEST}, and not a directory of ≥ 2 model directories)")

    @classmethod
    def _load_manifest(cls, path: Path) -> SchNetEnsemble:
        try:
            man = json.loads((path / MANIFEST).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EnsembleError(f"{path / MANIFEST}: malformed JSON ({e})") from e
        if man.get("format") != FORMAT or man.get("version") != VERSION:
            raise EnsembleError(f"{path / MANIFEST}: expected format {FORMAT!r} version {VERSION}")
        if man.get("std_ddof", STD_DDOF) != STD_DDOF:
            raise EnsembleError(f"{path / MANIFEST}: written with std ddof={man.get('std_ddof')}, this code uses {STD_DDOF}")
        try:
            ens = cls.from_model_dirs([path / m for m in man["members"]], Calibration.from_dict(man.get("calibration") or {}),
                                      man.get("meta") or {})
        except ModelLoadError as e:
            raise EnsembleError(str(e)) from e
        except KeyError as e:
            raise EnsembleError(f"{path / MANIFEST}: missing key {e}") from e
        return ens

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SchNetEnsemble:
        """Move (and optionally cast) the stacked weights; energy offsets stay float64."""
        if device is not None:
            self.device = torch.device(device)
        for key, v in self.params.items():
            cast = dtype if (dtype is not None and key not in ("atomref", "scale")) else None
            self.params[key] = v.to(device=self.device, dtype=cast)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.params["emb"].dtype

    # -- evaluation --
    def unseen_elements(self, Z: np.ndarray) -> list[int]:
        """Atomic numbers in ``Z`` that no member was trained on."""
        return sorted(set(np.unique(np.asarray(Z)).tolist()) - set(self.elements))

    def check_elements(self, Z: np.ndarray, where: str = "input") -> None:
        """Raise :class:`EnsembleError` naming unseen elements and the trained set."""
        unseen = self.unseen_elements(Z)
        if unseen:
            from ase.data import chemical_symbols

            sym = lambda zs: ", ".join(f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z={z})" for z in zs)  # noqa: E731
            raise EnsembleError(f"{where}: elements not seen in training: {sym(unseen)}; the ensemble was trained on "
                                f"{sym(self.elements)}")

    def cost_per_molecule(self, n_atoms: np.ndarray, n_pairs: np.ndarray) -> np.ndarray:
        """Estimated bytes per molecule (``n_pairs`` unordered) for all k members: the batching budget's unit."""
        c = self.config
        per_pair = 8 * c.n_interactions * c.n_filters + 16  # W, W', ∂E/∂W, messages and their saved inputs
        per_atom = 10 * c.n_interactions * max(c.n_filters, c.n_atom_basis) + 16
        item = torch.finfo(self.dtype).bits // 8
        return self.k * item * (per_pair * n_pairs.astype(np.float64) + per_atom * n_atoms.astype(np.float64))

    def iter_batches(self, mols: Molecules, memory_budget: int = DEFAULT_MEMORY_BUDGET
                     ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        """(first molecule, stop molecule, batch tensors) covering ``mols`` in order, memory-bounded."""
        counts, ptr, cutoff = mols.n_atoms, mols.atom_ptr, self.config.cutoff
        for c0, c1 in plan_batches(counts.astype(np.float64), _CHUNK_ATOMS):
            a0 = ptr[c0]
            cnt = counts[c0:c1]
            if cutoff is None:
                n_pairs, pairs, pair_ptr = cnt * (cnt - 1) // 2, None, None
            else:
                full, full_counts = cutoff_pairs_many(mols.R[a0 : ptr[c1]], ptr[c0 : c1 + 1] - a0, cutoff)
                keep = full[:, 0] < full[:, 1]  # each pair once
                pairs = full[keep]
                n_pairs = np.bincount(np.repeat(np.arange(len(cnt)), full_counts)[keep], minlength=len(cnt))
                pair_ptr = np.concatenate([[0], np.cumsum(n_pairs)])
            for b0, b1 in plan_batches(self.cost_per_molecule(cnt, n_pairs), memory_budget):
                s0, s1 = ptr[c0 + b0], ptr[c0 + b1]
                bc = cnt[b0:b1]
                if pairs is None:
                    pr = block_pairs(bc)
                else:
                    local_start = np.concatenate([[0], np.cumsum(bc)[:-1]])
                    pr = pairs[pair_ptr[b0] : pair_ptr[b1]] + np.repeat(local_start, n_pairs[b0:b1])[:, None]
                pt = torch.from_numpy(np.ascontiguousarray(pr, dtype=np.int64)).to(self.device)
                yield c0 + b0, c0 + b1, {
                    "Z": torch.from_numpy(mols.Z[s0:s1]).to(self.device),
                    "R": torch.from_numpy(mols.R[s0:s1]).to(self.device),
                    "mol": torch.repeat_interleave(torch.arange(len(bc)), torch.from_numpy(bc)).to(self.device),
                    "n_mols": torch.tensor(len(bc)),
                    "pi": pt[:, 0].contiguous(), "pj": pt[:, 1].contiguous()}

    def evaluate_batch(self, batch: dict[str, torch.Tensor], forces: bool = True, loop: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Member energies [k, n_mols] and forces [k, n_atoms, 3] of one batch.

        ``loop=True`` evaluates the members one after another with the same functional forward
        (the reference the vectorised pass is tested against, and the benchmark's baseline).
        """
        if not loop:
            return member_energies_forces(self.params, self.config, batch, forces)
        outs = [member_energies_forces(member_slice(self.params, m), self.config, batch, forces) for m in range(self.k)]
        E = torch.cat([o[0] for o in outs])
        return E, (torch.cat([o[1] for o in outs]) if forces else None)  # type: ignore[misc]

    def predict(self, mols: Molecules, forces: bool = True, calibrated: bool = True, members: bool = False,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, loop: bool = False,
                progress: Callable[[int, int], None] | None = None) -> EnsemblePrediction:
        """Ensemble mean and std (ddof = STD_DDOF) for every molecule of ``mols`` (positions in Å).

        Args:
            mols: molecules; their energies/forces, if any, are ignored.
            forces: also forces (one backward pass for all members).
            calibrated: multiply stds by the stored recalibration.
            members: keep every member's predictions (``members_energy`` [k, N], ``members_forces``).
            memory_budget: bytes of autograd state per batch (estimate).
            loop: members one at a time (reference path).
            progress: called with (molecules done, total).
        """
        self.check_elements(mols.Z, mols.meta.get("source", mols.name))
        N, n_at, k = len(mols), len(mols.Z), self.k
        e_mean, e_std = np.empty(N), np.empty(N)
        f_mean = np.empty((n_at, 3)) if forces else None
        f_std = np.empty((n_at, 3)) if forces else None
        m_e = np.empty((k, N)) if members else None
        m_f = np.empty((k, n_at, 3)) if members and forces else None
        ptr = mols.atom_ptr
        with torch.inference_mode(False):
            for m0, m1, batch in self.iter_batches(mols, memory_budget):
                E, Fk = self.evaluate_batch(batch, forces, loop)  # [k, n], [k, n_atoms, 3]
                e_mean[m0:m1] = E.mean(0).cpu().numpy()
                e_std[m0:m1] = E.std(0, correction=STD_DDOF).cpu().numpy()
                if m_e is not None:
                    m_e[:, m0:m1] = E.cpu().numpy()
                if Fk is not None:
                    a0, a1 = ptr[m0], ptr[m1]
                    F64 = Fk.to(torch.float64)
                    f_mean[a0:a1] = F64.mean(0).cpu().numpy()  # type: ignore[index]
                    f_std[a0:a1] = F64.std(0, correction=STD_DDOF).cpu().numpy()  # type: ignore[index]
                    if m_f is not None:
                        m_f[:, a0:a1] = F64.cpu().numpy()
                if progress is not None:
                    progress(m1, N)
        if calibrated:
            e_std = e_std * self.calibration.energy_scale
            f_std = None if f_std is None else f_std * self.calibration.forces_scale
        norm = mx = mn = None
        if f_std is not None:
            norm, mx, mn = _summaries(f_std, ptr)
        return EnsemblePrediction(e_mean, e_std, f_mean, f_std, norm, mx, mn, ptr.copy(), self.energy_unit,
                                  calibrated=calibrated and self.calibration.method != "identity",
                                  members_energy=m_e, members_forces=m_f)

    def predict_arrays(self, Z: np.ndarray, R: np.ndarray, atom_ptr: np.ndarray | None = None, **kw: Any) -> EnsemblePrediction:
        """:meth:`predict` for raw arrays: ``Z`` [n_atoms], ``R`` [n_atoms, 3] Å, ``atom_ptr`` [N+1] (default: one molecule)."""
        ptr = np.array([0, len(Z)]) if atom_ptr is None else np.asarray(atom_ptr)
        mols = Molecules(Z=Z, R=R, atom_ptr=ptr, E=None, F=None, energy_unit=self.energy_unit, name="input")
        return self.predict(mols, **kw)


__all__ = ["STD_DDOF", "EnsembleError", "EnsemblePrediction", "SchNetEnsemble", "block_pairs", "expected_layout",
           "member_energies", "member_energies_forces", "member_slice", "pair_filters", "plan_batches", "stack_states",
           "truncation_radius"]
