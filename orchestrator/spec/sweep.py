"""The ``sweep run`` spec: dataset, searched model/training, cv, search, resources, tracking."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from orchestrator.spec.load import apply_overrides, format_error, read_yaml, validate
from orchestrator.spec.space import Distribution, is_distribution, split_section
from orchestrator.spec.uri import SQLITE, resolve_uri, sqlite_path
from schnet_model.config import (
    FAMILIES,
    AnyConfig,
    DatasetConfig,
    StrictModel,
    TrainingConfig,
    family_key_hint,
    unknown_family,
)


class CVConfig(StrictModel):
    """k-fold cross-validation over the non-test data; every trial trains k members."""

    k: int = Field(5, ge=2, description="folds (members per trial)")
    seed: int = 0


class ASHAConfig(StrictModel):
    grace_period: int = Field(5, ge=1, description="epochs before a trial can be pruned")
    reduction_factor: float = Field(3.0, gt=1)
    max_epochs: int | None = Field(None, ge=1, description="default: training.max_epochs")


class SchedulerConfig(StrictModel):
    asha: ASHAConfig | None = None


class SearchConfig(StrictModel):
    num_samples: int = Field(20, ge=1, description="trials")
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    scheduler: SchedulerConfig | Literal["none"] = Field(default_factory=lambda: SchedulerConfig(asha=ASHAConfig()))
    initial_points: list[dict[str, Any]] = Field(
        default_factory=list, description="first trials ({dotted.key: value}); default: the paper configuration"
    )
    time_budget: float | None = Field(None, gt=0, description="seconds for the whole search")
    plan: Literal["auto", "off"] = Field(
        "auto", description="with time_budget: auto = screen many configurations on fold 0, then train the best and "
        "the paper configuration with all k folds within the budget (orchestrator/search/plan.py); off = ASHA alone")
    baseline: Literal["screen", "final"] = Field(
        "screen", description="with a budget plan: screen = the paper configuration is screened like any other and "
        "trained with all k folds only if it screens among the best (the final rung's time goes to the best "
        "configurations; it is reported at screening fidelity next to the best's screening); final = it is always "
        "trained with all k folds too (reported at full fidelity, at the cost of the best configurations' time)")
    warm_start: bool = Field(
        True, description="with a budget plan: each finalist's fold 0 continues from its screened state (the screening "
        "trained that fold on the same split with the same seed), the other folds start afresh")
    objective_rho: float = Field(
        0.01, ge=0, description="when training.rho is searched: ρ of the CV objective ρ·E_RMSE² + 3·F_RMSE² that ranks "
        "trials (each trial's own loss would reward a small ρ, not accuracy); default the paper's 0.01")
    checkpoint_every: int = Field(5, ge=1, description="epochs between fold checkpoints")
    max_failures: int = Field(2, ge=0, description="retries of a trial whose actor crashed")


Layout = Literal["stacked", "folds"]
CPU_AUTO_LAYOUT: Layout = "folds"
"""What ``layout: auto`` picks for a CPU-only trial, by measurement (``benchmarks/trial_throughput.py``,
docs/benchmarks.md): on CPU, k single-threaded fold processes keep every core busy, while one
stacked process runs the compiled atom-wise loops on one thread."""


MIN_FOLD_SHARE = 0.5
"""``resources: auto`` gives each fold its own actor only when it gets at least this share of a core."""


class ResourcesConfig(StrictModel):
    """What one trial asks of the cluster, and how it trains its k folds.

    ``layout``: ``stacked`` — the k fold members as one stacked model in the trial's own process
    (``cpus_per_trial``, ``gpus_per_trial``; the layout for GPUs: one process, batched kernels,
    CUDA graphs); ``folds`` — k fold actors (``cpus_per_fold``, ``gpus_per_fold`` each);
    ``auto`` — stacked when the trial asks for a GPU share, folds when a fold does, else
    :data:`CPU_AUTO_LAYOUT`.
    """

    auto: bool = Field(False, description="share the machine (or the largest node): `resources: auto`")
    layout: Literal["auto", "stacked", "folds"] = Field("auto", description="auto | stacked | folds")
    cpus_per_fold: float = Field(1.0, gt=0, description="folds layout: CPUs of each fold actor")
    gpus_per_fold: float = Field(0.0, ge=0, description="folds layout: GPU share of each fold actor (fractional)")
    cpus_per_trial: float | None = Field(
        None, gt=0, description="stacked layout: CPUs of the trial; default k × cpus_per_fold")
    gpus_per_trial: float = Field(
        0.0, ge=0, description="stacked layout: GPU share of the trial (0.25: four trials per GPU)")
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="folds layout: a trial's fold bundles PACKed onto few nodes, or SPREAD over nodes")

    @model_validator(mode="before")
    @classmethod
    def _auto(cls, v: Any) -> Any:
        return {"auto": True} if v == "auto" else v

    @model_validator(mode="after")
    def _consistent(self) -> ResourcesConfig:
        explicit = {k for k in self.model_fields_set & {"layout", "cpus_per_fold", "gpus_per_fold", "cpus_per_trial",
                                                        "gpus_per_trial"}
                    if getattr(self, k) != type(self).model_fields[k].default}  # a dumped spec repeats the defaults
        if self.auto and explicit:
            raise ValueError(f"auto shares the machine among the trials; it takes no {', '.join(sorted(explicit))} "
                             "(drop auto to set them yourself)")
        if self.layout == "stacked" and self.gpus_per_fold:
            raise ValueError("gpus_per_fold is for layout: folds; a stacked trial asks for gpus_per_trial")
        if self.layout == "folds" and self.gpus_per_trial:
            raise ValueError("gpus_per_trial is for layout: stacked; fold actors ask for gpus_per_fold")
        if self.gpus_per_fold and self.gpus_per_trial:
            raise ValueError("give gpus_per_trial (stacked layout) or gpus_per_fold (folds layout), not both")
        return self

    def shared(self, node: dict[str, float], k: int, concurrent: int) -> ResourcesConfig:
        """``resources: auto`` made explicit for a node (``{"CPU": .., "GPU": ..}``): its GPUs shared by the
        ``concurrent`` trials (stacked layout, a GPU share each), else its CPUs shared by ``concurrent`` trials × k
        fold actors (folds layout), or by ``concurrent`` stacked trials when a fold actor would get less than
        :data:`MIN_FOLD_SHARE` of a core (k processes per trial would only time-share the cores and hold k copies
        of torch in memory); explicit resources are returned as they are."""
        if not self.auto:
            return self
        cpus, gpus = float(node.get("CPU", 0.0)), float(node.get("GPU", 0.0))
        floor2 = lambda x: max(int(x * 100) / 100, 0.01)  # noqa: E731  two decimals, rounded down
        if gpus > 0:
            return ResourcesConfig(layout="stacked", cpus_per_trial=floor2(max(cpus / concurrent, 0.01)),
                                   gpus_per_trial=floor2(min(gpus / concurrent, 1.0)),
                                   placement_strategy=self.placement_strategy)
        per_fold = (cpus - 0.01 * concurrent) / (concurrent * k)
        if per_fold < MIN_FOLD_SHARE:  # more fold processes than cores: one stacked process per trial instead
            return ResourcesConfig(layout="stacked", cpus_per_trial=floor2(cpus / concurrent),
                                   placement_strategy=self.placement_strategy)
        return ResourcesConfig(layout="folds", cpus_per_fold=floor2(per_fold),
                               placement_strategy=self.placement_strategy)

    def resolved_layout(self) -> Layout:
        """The layout a trial uses (``auto`` resolved)."""
        if self.layout != "auto":
            return self.layout
        if self.gpus_per_trial:
            return "stacked"
        if self.gpus_per_fold:
            return "folds"
        return CPU_AUTO_LAYOUT

    def trial_cpus(self, k: int) -> float:
        """CPUs a trial of ``k`` folds holds: a stacked trial's own, or its k fold actors'."""
        if self.resolved_layout() == "stacked" and self.cpus_per_trial is not None:
            return self.cpus_per_trial
        return k * self.cpus_per_fold

    def bundles(self, k: int) -> list[dict[str, float]]:
        """The trial's placement-group bundles: one for a stacked trial, a coordinator + k folds otherwise."""
        if self.resolved_layout() == "stacked":
            return [{"CPU": self.trial_cpus(k), **({"GPU": self.gpus_per_trial} if self.gpus_per_trial else {})}]
        fold = {"CPU": self.cpus_per_fold, **({"GPU": self.gpus_per_fold} if self.gpus_per_fold else {})}
        return [{"CPU": 0.01}] + [fold] * k

    def describe(self, k: int) -> str:
        """One line: the layout and what a trial asks for."""
        auto = " (layout auto)" if self.layout == "auto" else ""
        if self.resolved_layout() == "stacked":
            gpu = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
            return (f"stacked{auto}: the {k} folds as one model in the trial's process, "
                    f"{self.trial_cpus(k):g} CPU{gpu} per trial")
        gpu = f", {self.gpus_per_fold:g} GPU" if self.gpus_per_fold else ""
        return f"folds{auto}: {k} fold actors of {self.cpus_per_fold:g} CPU{gpu} per trial"

    def gpus(self) -> float:
        """The GPU share this spec asks for (a trial's or a fold's)."""
        return self.gpus_per_trial or self.gpus_per_fold


class TrackingConfig(StrictModel):
    uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    experiment: str | None = Field(None, description="default: the sweep name")

    def resolved_uri(self) -> str:
        return resolve_uri(self.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db", Path.cwd())


class SweepSpec(StrictModel):
    """Validated ``sweep run`` spec. ``model``/``training`` keep fixed values and distributions."""

    name: str = "sweep"
    dataset: DatasetConfig
    model: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    cv: CVConfig = CVConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig(auto=True)
    tracking: TrackingConfig = TrackingConfig()
    storage: str | None = Field(None, description="Tune results: a local dir (default ./sweeps) or a URI")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("a non-empty name without slashes or spaces")
        return v

    @model_validator(mode="after")
    def _molecule_in_name(self) -> SweepSpec:
        """``name: md17_{molecule}``: one spec per dataset family, the sweep named after the molecule chosen."""
        if "{molecule}" in self.name:
            self.name = self.name.replace("{molecule}", self.dataset.molecule or "any")
        return self

    @model_validator(mode="after")
    def _check_sections(self) -> SweepSpec:
        errors = self._check_family()
        if errors:
            raise ValueError("; ".join(errors))
        for section in ("model", "training"):
            errors += self._check_section(section)
        errors += self._check_points()
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def _check_points(self) -> list[str]:
        """One-line errors of ``search.initial_points``: every key a model or training key, and a model key one of
        the point's family (a misspelt key was dropped silently before)."""
        errors: list[str] = []
        fixed_family = None if is_distribution(self.model.get("family", "schnet")) else self.families()[0]
        known = {"model": set().union(*(schema.model_fields for schema in FAMILIES.values())),
                 "training": set(TrainingConfig.model_fields)}
        for n, point in enumerate(self.search.initial_points):
            family = point.get("model.family", fixed_family)
            for key in point:
                section, _, field = key.partition(".")
                where = f"search.initial_points[{n}].{key}"
                if field not in known.get(section, ()):
                    errors.append(f"{where}: unknown key (expected model.* or training.* keys)")
                elif section == "model" and family in FAMILIES and field not in FAMILIES[family].model_fields:
                    errors.append(f"{where}: {family_key_hint(field, family)}")
        return errors

    def _check_family(self) -> list[str]:
        try:
            names = self.families()
        except ValidationError as e:
            return [f"model.family: {e.errors()[0]['msg'].removeprefix('Value error, ')}"]
        bad = [n for n in names if n not in FAMILIES]
        return [unknown_family(*bad)] if bad else []

    def families(self) -> list[str]:
        """The model families this spec trains: the one ``model.family`` names (SchNet when none), or the ones it
        searches."""
        raw = self.model.get("family", "schnet")
        return list(Distribution.model_validate(raw).extremes()) if is_distribution(raw) else [raw]

    def _schemas(self, section: str) -> list[type[StrictModel]]:
        return [FAMILIES[f] for f in self.families()] if section == "model" else [TrainingConfig]

    def _check_section(self, section: str) -> list[str]:
        """One-line errors of a model/training section: every fixed value and searched range against the schema of
        each family that has the key (a key of another family only: named as such)."""
        errors: list[str] = []
        schemas = self._schemas(section)
        fixed, dists = split_section({k: v for k, v in getattr(self, section).items() if k != "family"})
        for key in [*fixed, *dists]:
            if not any(key in schema.model_fields for schema in schemas):
                hint = family_key_hint(key, self.families()[0]) if section == "model" and len(schemas) == 1 else None
                errors.append(f"{section}.{key}: {hint or 'unknown key'}")
        if errors:
            return errors
        for schema in schemas:
            own = {k: v for k, v in fixed.items() if k in schema.model_fields}
            try:
                schema(**own)
            except ValidationError as e:
                errors += [f"{section}.{format_error(err)}" for err in e.errors()]
                continue
            for key, raw in dists.items():
                if key not in schema.model_fields:
                    continue
                try:
                    dist = Distribution.model_validate(raw)
                except ValidationError as e:
                    errors.append(f"{section}.{key}: {e.errors()[0]['msg'].removeprefix('Value error, ')}")
                    continue
                for value in dist.extremes():
                    try:
                        schema(**{**own, key: value})
                    except ValidationError as e:
                        errors.append(f"{section}.{key}: search value {value!r}: {e.errors()[0]['msg']}")
                        break
                for cond in dist.when or {}:
                    sec, _, k = cond.partition(".")
                    known = sec in ("model", "training") and any(k in t.model_fields for t in self._schemas(sec))
                    if not known:
                        errors.append(f"{section}.{key}.when: unknown key {cond!r}")
        return list(dict.fromkeys(errors))

    # -- derived ------------------------------------------------------------------------
    def space(self) -> dict[str, Distribution]:
        """Searched hyperparameters by dotted key. With ``model.family`` searched, a key of one family only is
        searched when that family is chosen (its ``when`` holds ``model.family``)."""
        out = {}
        families = self.families()
        for section in ("model", "training"):
            _, dists = split_section(getattr(self, section))
            for k, v in dists.items():
                d = Distribution.model_validate(v)
                if section == "model" and k != "family" and len(families) > 1:
                    owners = [f for f in families if k in FAMILIES[f].model_fields]
                    if len(owners) == 1 and "model.family" not in (d.when or {}):
                        d = d.model_copy(update={"when": {**(d.when or {}), "model.family": owners[0]}})
                out[f"{section}.{k}"] = d
        if "model.family" in out:  # decided first: the family's own keys are conditional on it
            out = {"model.family": out.pop("model.family"), **out}
        return out

    def fixed(self) -> dict[str, Any]:
        """Every non-searched value by dotted key, schema defaults included (with ``model.family`` searched: the
        model keys every family has, with the default they share, and the spec's own)."""
        out: dict[str, Any] = {}
        for section in ("model", "training"):
            fixed, _ = split_section(getattr(self, section))
            dumps = [schema(**{k: v for k, v in fixed.items() if k in schema.model_fields}).model_dump()
                     for schema in self._schemas(section)]
            common = {k: v for k, v in dumps[0].items() if all(d.get(k, object()) == v for d in dumps[1:])}
            out.update({f"{section}.{k}": v for k, v in {**common, **fixed}.items()})
        return out

    def initial_points(self) -> list[dict[str, Any]]:
        """First trials: the spec's, else the paper configuration (schema defaults; SchNet's when the family is
        searched) for the searched keys whose distribution holds it."""
        space = self.space()
        if self.search.initial_points:
            return [{k: v for k, v in p.items() if k in space} for p in self.search.initial_points]
        families = self.families()
        family = "schnet" if "schnet" in families else families[0]
        defaults = {**{f"model.{k}": v for k, v in FAMILIES[family]().model_dump().items()},
                    **{f"training.{k}": v for k, v in TrainingConfig().model_dump().items()}}
        fixed = self.fixed()
        point: dict[str, Any] = {}
        for k, d in space.items():
            if d.when and any(point.get(c, fixed.get(c, defaults.get(c))) != v for c, v in d.when.items()):
                continue
            if d.contains(defaults[k]):  # a default the space leaves out is sampled instead
                point[k] = defaults[k]
        return [point] if point else []

    def materialize(self, params: dict[str, Any]) -> tuple[AnyConfig, TrainingConfig]:
        """Model and training configs of one trial (fixed values + sampled ``params``); the model's keys are those of
        the family it names."""
        values = {**self.fixed(), **params}
        model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.")}
        training = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("training.")}
        schema = FAMILIES[model.get("family", "schnet")]
        return schema(**{k: v for k, v in model.items() if k in schema.model_fields}), TrainingConfig(**training)

    def train_spec(self):
        """The spec of ``sweep train``: the first trial's configuration (the paper's, or initial_points[0])."""
        from orchestrator.spec.load import TrainSpec

        points = self.initial_points()
        model, training = self.materialize(points[0] if points else {})
        return TrainSpec(name=self.name, dataset=self.dataset, model=model, training=training)

    def objective_rho(self) -> float | None:
        """ρ of the CV objective when ``training.rho`` is searched (trials' own losses are then not comparable); None:
        the trials' validation loss is the objective."""
        return self.search.objective_rho if "training.rho" in self.space() else None

    def max_epochs(self) -> int:
        fixed = self.fixed()
        if (isinstance(self.search.scheduler, SchedulerConfig) and self.search.scheduler.asha
                and self.search.scheduler.asha.max_epochs):
            return self.search.scheduler.asha.max_epochs
        return int(fixed["training.max_epochs"])


def load_sweep_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep spec; relative paths resolve against the spec's directory."""
    path = Path(path)
    raw = read_yaml(path)
    origin = apply_overrides(raw, overrides or [])
    spec = validate(SweepSpec, raw, str(path), origin)
    base = path.resolve().parent
    spec.dataset.resolve_paths(base)
    if spec.storage is not None and "://" not in spec.storage and not Path(spec.storage).is_absolute():
        spec.storage = str((base / spec.storage).resolve())
    if spec.tracking.uri and sqlite_path(spec.tracking.uri) is not None:  # a SQLite file beside the spec
        spec.tracking.uri = resolve_uri(spec.tracking.uri, base)
    return spec
