"""Stacked training: k members of one model family (SchNet, PaiNN) trained as one model with a member axis, in one
process.

Each member keeps what :class:`~schnet_model.training.trainer.Trainer` gives a model trained alone:
its own training and validation sets, shuffling seed, initial weights (``torch.manual_seed(seed)``
then :class:`SchNet`), energy offsets fitted on its own training set, Adam state, learning-rate
schedule (per-step exponential or per-epoch plateau), early stopping (a stopped member is frozen,
its best state kept), validation metrics and a checkpoint in the Trainer's own format
(:meth:`member_state_dict` loads into a Trainer and back). The members' weights live in one flat
``[k, n_params]`` tensor; every step runs the k members' own batches through the core
(:func:`schnet_model.nn.core.energies_forces`) at once and updates them with one Adam over the
member axis, masked per member (a member with fewer batches, or stopped, is not updated).

Built for the GPU: a training step (forward, forces by the explicit backward, per-member loss,
gradient, clipping, Adam) has no host synchronisation; the host reads results once per epoch.
On CUDA, when every molecule has the same size the collation fills partial batches with weight-0
copies, every step has the same shapes, and the whole step is captured once as a CUDA graph and
replayed (``graphs``); otherwise, and on other devices, it runs eagerly. :attr:`mode` says which.

When training ends, :meth:`StackedTrainer.refit_offsets` refits each member's energy references on
its training residuals, as :meth:`Trainer.refit_offsets` does for a model trained alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from schnet_model.config import TrainingConfig
from schnet_model.data.molecules import Molecules
from schnet_model.data.stack import StackCollator, StackedBatch, stacked_loss
from schnet_model.nn.compiled import compile_now
from schnet_model.nn.core import FilterPath, ForcePath, Params
from schnet_model.nn.family import (
    OFFSET_KEYS,
    AnyConfig,
    AnyModel,
    build_model,
    energies_forces,
    member_state,
    param_keys,
    paths,
)
from schnet_model.nn.schnet import filter_path
from schnet_model.training.errors import NonFiniteLossError, NonFinitePrediction
from schnet_model.training.metrics import Metrics, Predictions, metrics_of
from schnet_model.training.optim import make_adam, make_schedulers, set_horizon
from schnet_model.training.refit import ATOMREF, OffsetRefit, plan_refit
from schnet_model.training.trainer import EpochResult, fit_offsets_fn, steps_per_epoch

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, as make_adam uses them


class MemberNonFinite(NonFiniteLossError):
    """Member ``member``'s training loss became NaN/inf (the other members are unaffected)."""

    def __init__(self, member: int, epoch: int, step: int, value: float) -> None:
        super().__init__(epoch, step, value)
        self.member = member


@dataclass
class Member:
    """One member's data and optimisation settings (its seed included)."""

    train: Molecules
    val: Molecules
    config: TrainingConfig


class _Schedule:
    """A member's learning rate, driven by torch's own schedulers on a parameterless proxy optimizer
    (so the state dicts are those of a Trainer's)."""

    def __init__(self, cfg: TrainingConfig, steps: int) -> None:
        self.proxy = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        self.step_scheduler, self.plateau = make_schedulers(self.proxy, cfg, steps)
        self.proxy._opt_called = True  # its "steps" are the stacked Adam's (no "scheduler before optimizer" warning)

    @property
    def lr(self) -> float:
        return float(self.proxy.param_groups[0]["lr"])


class StackedTrainer:
    """Trains k members stacked (see the module docstring).

    Args:
        model_cfg: the members' common architecture.
        members: each member's data and settings; batch size, ρ, forces, clipping and the
            architecture must agree (seeds, learning rates and schedules may differ).
        device: where to train (``cfg.device`` of the members is not consulted).
        dtype: parameter dtype (float32; float64 for exactness checks).
        graphs: capture the step as a CUDA graph when shapes allow (CUDA only).
        forces_by: ``"explicit"`` backward or ``"autograd"`` (double backward) in training.
        filters: the core's filter path (default: windowed on CPU, dense elsewhere).
    """

    def __init__(self, model_cfg: AnyConfig, members: list[Member], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, graphs: bool = True, forces_by: ForcePath = "explicit",
                 filters: FilterPath | None = None) -> None:
        cfgs = [m.config for m in members]
        c0 = cfgs[0]
        for i, c in enumerate(cfgs):
            for key in ("batch_size", "rho", "use_forces", "grad_clip", "compile_after"):
                if getattr(c, key) != getattr(c0, key):
                    raise ValueError(f"member {i}: training.{key}={getattr(c, key)!r} differs from member 0's "
                                     f"{getattr(c0, key)!r}; stacked members share it")
            if members[i].train.E is None:
                raise ValueError(f"{members[i].train.name}: training needs energies")
        self.model_cfg, self.members, self.cfgs = model_cfg, members, cfgs
        self.k = len(members)
        self.device, self.dtype = torch.device(device), dtype
        self.batch_size, self.rho, self.grad_clip = c0.batch_size, c0.rho, c0.grad_clip
        self.use_forces = all(m.train.has_forces for m in members) if c0.use_forces is None else c0.use_forces
        if self.use_forces and not all(m.train.has_forces for m in members):
            raise ValueError("training.use_forces is true but a member's training set has no forces")
        self.forces_by = forces_by
        self.filters = filters or filter_path(self.device)
        states = []
        for m, c in zip(members, cfgs, strict=True):  # exactly what a Trainer of this member starts from
            torch.manual_seed(c.seed)
            model = build_model(model_cfg).to(dtype)
            model.offsets.set(*fit_offsets_fn(m.train, model_cfg.max_z))
            states.append(model.state_dict())
        learn = [key for key in param_keys(model_cfg) if key not in OFFSET_KEYS]
        self.shapes = {key: tuple(states[0][key].shape) for key in learn}
        sizes = [math.prod(self.shapes[key]) for key in learn]
        self.slices = dict(zip(learn, zip(np.cumsum([0, *sizes[:-1]]).tolist(), np.cumsum(sizes).tolist(), strict=True),
                               strict=True))
        flat = torch.stack([torch.cat([s[key].reshape(-1) for key in learn]) for s in states])  # [k, n_params]
        dev = self.device
        self.flat = flat.to(dev, dtype).requires_grad_(True)
        self.offsets = {key: torch.stack([s[key] for s in states]).to(dev, torch.float64) for key in OFFSET_KEYS}
        self.exp_avg = torch.zeros_like(self.flat, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(self.flat, requires_grad=False)
        self.adam_step = torch.zeros(self.k, dtype=torch.float64, device=dev)  # steps taken, per member
        self.best_flat = self.flat.detach().clone()
        self.loss_sum = torch.zeros(self.k, dtype=torch.float64, device=dev)
        self.first_bad = torch.full((self.k,), -1.0, dtype=torch.float64, device=dev)  # step of a non-finite loss
        self.bad_value = torch.zeros(self.k, dtype=torch.float64, device=dev)
        self.sched = [_Schedule(c, steps_per_epoch(m.train, c)) for m, c in zip(members, cfgs, strict=True)]
        self.rng = [np.random.default_rng(c.seed) for c in cfgs]
        self.epoch = [0] * self.k
        self.step = [0] * self.k
        self.best_val_loss = [math.inf] * self.k
        self.best_epoch = [0] * self.k
        self.epochs_without_improvement = [0] * self.k
        self.stopped = [False] * self.k
        cut = model_cfg.cutoff
        self.train_collator = StackCollator([m.train for m in members], cut, dtype)
        self.val_collator = StackCollator([m.val for m in members], cut, dtype)
        self.static = self.train_collator.fixed_size is not None  # every step can have one shape
        self.use_graphs = graphs and self.device.type == "cuda" and self.static
        self._graph = None
        self._graph_error = ""
        self._calls = 0
        self.compile_after = c0.compile_after

    # -- descriptions ----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """How a step runs, in one line (for logs)."""
        where = f"{self.k} members stacked on {self.device}, {paths(self.model_cfg, self.filters, self.forces_by)}"
        if self.use_graphs:
            return f"{where}: whole training step as one captured CUDA graph (static shapes)"
        why = ("molecule sizes differ" if not self.static else self._graph_error or "CUDA graphs off"
               if self.device.type == "cuda" else "not CUDA")
        cpu = ""
        if self.device.type == "cpu":
            cpu = ("; CPU kernels eager (training.compile_after: null)" if self.compile_after is None else
                   f"; CPU kernels compiled by torch.compile from step {self.compile_after} (training.compile_after)")
        return f"{where}: eager ({why}){cpu}"

    # -- parameters ------------------------------------------------------------------------
    def params(self, flat: torch.Tensor | None = None) -> Params:
        """Core parameters: views of ``flat`` (default: the live weights) and the offsets."""
        flat = self.flat if flat is None else flat
        out = {key: flat[:, a:b].view(self.k, *self.shapes[key]) for key, (a, b) in self.slices.items()}
        return {**out, **self.offsets}

    def member_model(self, m: int, best: bool = True) -> AnyModel:
        """Member ``m`` as a plain module of its family on the CPU (its best weights by default)."""
        model = build_model(self.model_cfg).to(self.dtype)
        model.load_state_dict(member_state(self.params(self.best_flat if best else self.flat.detach()), m,
                                           self.model_cfg))
        return model

    # -- one step --------------------------------------------------------------------------
    def _step(self, b: StackedBatch, lr: torch.Tensor, on: torch.Tensor) -> None:
        """Forward, loss per member, gradient, clipping, masked Adam; no host synchronisation.

        ``lr`` [k] float64, ``on`` [k] float64 (1: the member takes this step, 0: it is left as is).
        """
        compiled = compile_now(self._calls, self.compile_after, self.device, f"{self.k} stacked members")
        self._calls += 1
        E, F = energies_forces(self.params(), self.model_cfg, b.graph(), self.use_forces, create_graph=True,
                               filters=self.filters, forces_by=self.forces_by, compiled=compiled)
        loss = stacked_loss(E, F, b, self.rho, self.use_forces)  # [k]
        (g,) = torch.autograd.grad(loss.sum(), self.flat)  # [k, n_params]
        with torch.no_grad():
            active = on > 0
            bad = active & ~torch.isfinite(loss) & (self.first_bad < 0)
            self.first_bad.copy_(torch.where(bad, self.adam_step, self.first_bad))
            self.bad_value.copy_(torch.where(bad, loss, self.bad_value))
            self.loss_sum.add_(torch.where(active, loss * b.weight.sum(1), 0.0))
            if self.grad_clip is not None:  # torch.nn.utils.clip_grad_norm_, per member
                norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
                g = g * (self.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            self.adam_step.add_(on)
            t = self.adam_step.clamp(min=1.0)
            step_size = (lr / (1.0 - BETA1**t)).to(self.dtype)[:, None]  # [k, 1]
            bc2_sqrt = torch.sqrt(1.0 - BETA2**t).to(self.dtype)[:, None]
            keep = active[:, None]
            self.exp_avg.copy_(torch.where(keep, torch.lerp(self.exp_avg, g, 1.0 - BETA1), self.exp_avg))
            self.exp_avg_sq.copy_(torch.where(keep, self.exp_avg_sq * BETA2 + (1.0 - BETA2) * g * g, self.exp_avg_sq))
            update = step_size * (self.exp_avg / (self.exp_avg_sq.sqrt() / bc2_sqrt + EPS))
            self.flat.sub_(torch.where(keep, update, 0.0))

    def _run_step(self, b: StackedBatch, lrs: list[float], on: list[bool]) -> None:
        lr = torch.tensor(lrs, dtype=torch.float64)
        act = torch.tensor(on, dtype=torch.float64)
        if self.use_graphs and self._graph is None:
            try:
                self._capture(b)
            except RuntimeError as e:  # an operation that cannot be captured: the same step, eagerly
                self.use_graphs = False
                self._graph_error = f"CUDA graph capture failed: {str(e).splitlines()[0][:200]}"
        if self.use_graphs:
            if b.shape_key == self._graph_key:
                for name, buf in vars(self._static_batch).items():
                    if buf is not None:
                        buf.copy_(getattr(b, name), non_blocking=True)
                self._static_lr.copy_(lr, non_blocking=True)
                self._static_on.copy_(act, non_blocking=True)
                self._graph.replay()
                return
        self._step(b.to(self.device, non_blocking=True), lr.to(self.device), act.to(self.device))

    def _capture(self, b: StackedBatch) -> None:
        """Capture one step as a CUDA graph on static buffers (warm-up steps with every member off)."""
        self._static_batch = b.to(self.device)
        self._static_lr = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        self._static_on = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # members off: no state changes
                self._step(self._static_batch, self._static_lr, self._static_on)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(self._static_batch, self._static_lr, self._static_on)
        self._graph, self._graph_key = graph, b.shape_key

    # -- one epoch -------------------------------------------------------------------------
    def run_epoch(self) -> list[EpochResult | None]:
        """Train every running member over its training set once, then validate it.

        Returns one :class:`EpochResult` per member (None for members stopped before this epoch).
        Raises :class:`MemberNonFinite` naming the first member whose loss became NaN/inf.
        """
        t0 = time.perf_counter()
        running = [m for m in range(self.k) if not self.stopped[m]]
        B = self.batch_size
        orders = {m: self.rng[m].permutation(len(self.members[m].train)) for m in running}
        n_batches = {m: -(-len(orders[m]) // B) for m in running}
        n_real = {m: 0 for m in running}
        for m in running:
            self.epoch[m] += 1
        with torch.no_grad():
            self.loss_sum.zero_()
        empty = np.zeros(0, np.int64)
        for s in range(max(n_batches.values(), default=0)):
            picks = [orders[m][s * B:(s + 1) * B] if m in orders and s < n_batches[m] else empty for m in range(self.k)]
            on = [len(p) > 0 for p in picks]
            batch = self.train_collator.collate(picks, fill_to=B if self.static else None)
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            self._run_step(batch, [self.sched[m].lr for m in range(self.k)], on)
            for m in range(self.k):
                if on[m]:
                    self.step[m] += 1
                    n_real[m] += len(picks[m])
                    if self.sched[m].step_scheduler is not None:
                        self.sched[m].step_scheduler.step()
        first_bad, bad_value, loss_sum = (t.tolist() for t in (self.first_bad, self.bad_value, self.loss_sum))
        for m in running:
            if first_bad[m] >= 0:
                raise MemberNonFinite(m, self.epoch[m], int(first_bad[m]), bad_value[m])
        t_val = time.perf_counter()
        vals = self.validate(running)
        val_seconds = time.perf_counter() - t_val  # every running member's validation set, stacked
        out: list[EpochResult | None] = [None] * self.k
        for m in running:
            val = vals[m]
            if not math.isfinite(val.loss):
                raise MemberNonFinite(m, self.epoch[m], self.step[m], val.loss)
            sc = self.sched[m]
            if sc.plateau is not None:
                sc.plateau.step(val.loss)
            improved = val.loss < self.best_val_loss[m] - self.cfgs[m].early_stopping_min_delta
            if improved:
                self.best_val_loss[m], self.best_epoch[m] = val.loss, self.epoch[m]
                with torch.no_grad():
                    self.best_flat[m].copy_(self.flat[m])
                self.epochs_without_improvement[m] = 0
            else:
                self.epochs_without_improvement[m] += 1
            p = self.cfgs[m].early_stopping_patience
            self.stopped[m] = p is not None and self.epochs_without_improvement[m] >= p
            out[m] = EpochResult(epoch=self.epoch[m], step=self.step[m], train_loss=loss_sum[m] / max(n_real[m], 1),
                                 val=val, lr=sc.lr, seconds=time.perf_counter() - t0, improved=improved,
                                 val_seconds=val_seconds)
        return out

    # -- evaluation ------------------------------------------------------------------------
    def predict(self, sets: dict[int, Molecules], best: bool = False, batch_size: int = 128,
                forces: bool | None = None) -> dict[int, Predictions]:
        """Energies (and forces: when training uses them, or as ``forces`` says) of member m on ``sets[m]``,
        all members stacked."""
        use_forces = self.use_forces if forces is None else forces
        ms = sorted(sets)
        if not ms:
            return {}
        datasets = [sets.get(m, self.members[m].val) for m in range(self.k)]
        collator = (self.val_collator if all(datasets[m] is self.members[m].val for m in range(self.k))
                    else StackCollator(datasets, self.model_cfg.cutoff, self.dtype))
        params = self.params(self.best_flat if best else self.flat.detach())
        E_out = {m: np.empty(len(sets[m])) for m in ms}
        F_out = {m: np.empty((len(sets[m].Z), 3)) for m in ms} if use_forces else {}
        n_steps = max(-(-len(sets[m]) // batch_size) for m in ms)
        empty = np.zeros(0, np.int64)
        with torch.no_grad():
            for s in range(n_steps):
                picks = [np.arange(s * batch_size, min((s + 1) * batch_size, len(sets[m]))) if m in sets else empty
                         for m in range(self.k)]
                b = collator.collate(picks, fill_to=batch_size if collator.fixed_size is not None else None)
                E, F = energies_forces(params, self.model_cfg, b.to(self.device).graph(), use_forces,
                                       filters=self.filters)
                E = E.cpu().numpy()
                F = None if F is None else F.to(torch.float64).cpu().numpy()
                for m in ms:
                    idx = picks[m]
                    if not len(idx):
                        continue
                    E_out[m][idx] = E[m, : len(idx)]
                    if F is not None:
                        ptr = sets[m].atom_ptr
                        a0, a1 = ptr[idx[0]], ptr[idx[-1] + 1]
                        F_out[m][a0:a1] = F[m, : a1 - a0]
        return {m: Predictions(E_out[m], F_out.get(m)) for m in ms}

    def validate(self, members: list[int], best: bool = False) -> dict[int, Metrics]:
        """Validation metrics of ``members`` on their own validation sets (NaN predictions:
        :class:`MemberNonFinite`)."""
        preds = self.predict({m: self.members[m].val for m in members}, best=best)
        out = {}
        for m in members:
            try:
                out[m] = metrics_of(preds[m], self.members[m].val, self.rho, self.use_forces)
            except NonFinitePrediction:  # the weights diverged without a non-finite training loss
                raise MemberNonFinite(m, self.epoch[m], self.step[m], math.nan) from None
        return out

    def refit_offsets(self, batch_size: int = 128) -> list[OffsetRefit]:
        """Refit every member's per-element energy references on its best weights' training residuals.

        Member by member what :meth:`Trainer.refit_offsets` does (kept when it lowers the member's
        validation energy MAE), with the energies of all members predicted stacked. A kept
        correction is added in place to ``offsets["offsets.atomref"][m]``, which the live and best
        weights share: :meth:`member_model` and :meth:`member_state_dict` then carry it. Call it once
        training is over. Returns one :class:`OffsetRefit` per member.
        """
        every = range(self.k)
        e_train = self.predict({m: self.members[m].train for m in every}, best=True, batch_size=batch_size,
                               forces=False)
        e_val = self.predict({m: self.members[m].val for m in every}, best=True, batch_size=batch_size, forces=False)
        out = []
        for m in every:
            delta, result = plan_refit(self.members[m].train, self.members[m].val, e_train[m].energy, e_val[m].energy,
                                       self.model_cfg.max_z)
            if result.kept:
                with torch.no_grad():  # in place: a captured CUDA graph reads these very tensors
                    ref = self.offsets[ATOMREF]  # [k, max_z] float64
                    ref[m].add_(torch.as_tensor(delta, dtype=ref.dtype, device=ref.device))
            out.append(result)
        return out

    def set_horizon(self, epochs_left: float) -> bool:
        """Every member's schedule ends with its steps taken and ``epochs_left`` more epochs (what a time budget still
        lets the run train): a cosine decays over them, an exponential cools down over their last ``cooldown``
        (:func:`~schnet_model.training.optim.set_horizon`), as does a plateau schedule; False when no member's
        schedule changed."""
        return any([set_horizon(self.sched[m].step_scheduler or self.sched[m].plateau, self.cfgs[m],
                                steps_per_epoch(self.members[m].train, self.cfgs[m]), epochs_left)
                    for m in range(self.k)])

    # -- checkpoints -----------------------------------------------------------------------
    def member_state_dict(self, m: int) -> dict:
        """Member ``m``'s state in the format of :meth:`Trainer.state_dict` (CPU tensors)."""
        model = self.member_model(m, best=False)
        opt = make_adam(model.parameters(), self.cfgs[m].lr)
        step_scheduler, plateau = make_schedulers(opt, self.cfgs[m],
                                                  steps_per_epoch(self.members[m].train, self.cfgs[m]))
        step = float(self.adam_step[m])
        for key, p in model.named_parameters():
            a, b = self.slices[key]
            shape = self.shapes[key]
            if step > 0:
                opt.state[p] = {"step": torch.tensor(step, dtype=torch.float32),
                                "exp_avg": self.exp_avg[m, a:b].detach().cpu().view(shape).clone(),
                                "exp_avg_sq": self.exp_avg_sq[m, a:b].detach().cpu().view(shape).clone()}
        opt.param_groups[0]["lr"] = self.sched[m].lr
        sc = self.sched[m]
        return {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step_scheduler": None if sc.step_scheduler is None else sc.step_scheduler.state_dict(),
            "plateau": None if sc.plateau is None else sc.plateau.state_dict(),
            "rng": self.rng[m].bit_generator.state,
            "epoch": self.epoch[m],
            "step": self.step[m],
            "best_val_loss": self.best_val_loss[m],
            "best_epoch": self.best_epoch[m],
            "best_state": self.member_model(m, best=True).state_dict(),
            "epochs_without_improvement": self.epochs_without_improvement[m],
        }

    def load_member_state_dict(self, m: int, state: dict) -> None:
        """Restore member ``m`` from :meth:`member_state_dict` (or a Trainer's state dict)."""
        learn = list(self.slices)
        with torch.no_grad():
            for target, source in ((self.flat, state["model"]), (self.best_flat, state["best_state"])):
                target[m].copy_(torch.cat([source[key].reshape(-1) for key in learn]).to(target))
            for key in OFFSET_KEYS:
                self.offsets[key][m].copy_(state["model"][key])
            opt = state["optimizer"]
            names = [key for key, _ in build_model(self.model_cfg).named_parameters()]
            entries = opt["state"]
            self.adam_step[m] = float(entries[0]["step"]) if entries else 0.0
            for i, key in enumerate(names):
                a, b = self.slices[key]
                e = entries.get(i)
                self.exp_avg[m, a:b] = 0.0 if e is None else e["exp_avg"].reshape(-1).to(self.exp_avg)
                self.exp_avg_sq[m, a:b] = 0.0 if e is None else e["exp_avg_sq"].reshape(-1).to(self.exp_avg_sq)
        sc = self.sched[m]
        sc.proxy.param_groups[0]["lr"] = opt["param_groups"][0]["lr"]
        if sc.step_scheduler is not None and state["step_scheduler"] is not None:
            sc.step_scheduler.load_state_dict(state["step_scheduler"])
        if sc.plateau is not None and state["plateau"] is not None:
            sc.plateau.load_state_dict(state["plateau"])
        self.rng[m].bit_generator.state = state["rng"]
        self.epoch[m], self.step[m] = int(state["epoch"]), int(state["step"])
        self.best_val_loss[m], self.best_epoch[m] = float(state["best_val_loss"]), int(state["best_epoch"])
        self.epochs_without_improvement[m] = int(state["epochs_without_improvement"])
        p = self.cfgs[m].early_stopping_patience
        self.stopped[m] = p is not None and self.epochs_without_improvement[m] >= p
