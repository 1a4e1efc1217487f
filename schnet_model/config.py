"""Validated configuration of the model, the dataset and single-model training.

Every default reproduces Schütt et al., "SchNet: A continuous-filter convolutional neural
network for modeling quantum interactions" (NeurIPS 2017), unless its docstring says otherwise.
The orchestrator's YAML spec embeds these three sections unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from schnet_model.units import canonical_energy_unit, canonical_length_unit

COMPILE_AFTER = 200
"""Default of ``training.compile_after``: a model compiles its CPU kernels after this many fast-path calls (eager
before). Compilation costs 20–30 s once per process on a small CPU, which short runs (tests, quick trials) never
recover. Counted per model instance, so two identically seeded runs switch at the same step."""


class StrictModel(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """SchNet architecture.

    Paper default (64 features, 64 filters, 3 interactions, 300 Gaussians 0–30 Å every 0.1 Å,
    γ = 10 Å⁻², no cutoff) has 116,033 trainable parameters. The paper's Table 1 variants are
    expressed through ``n_atom_basis``, ``n_filters`` and ``n_interactions`` (for example
    small: 32/32/2, large: 128/128/6).
    """

    n_atom_basis: int = Field(64, ge=1, description="atom feature size F_atom")
    n_filters: int = Field(64, ge=1, description="filter size of the cfconv layers")
    n_interactions: int = Field(3, ge=1, description="number of interaction blocks")
    rbf_max: float = Field(30.0, gt=0, description="last Gaussian centre bound in Å (exclusive)")
    rbf_spacing: float = Field(0.1, gt=0, description="distance between Gaussian centres in Å")
    gamma: float = Field(10.0, gt=0, description="Gaussian width γ in Å⁻²")
    cutoff: float | None = Field(
        None, gt=0, description="cosine cutoff radius in Å; null = all pairs in the molecule"
    )
    n_output_hidden: int | None = Field(
        None, ge=1, description="hidden size of the output MLP; null = n_atom_basis // 2 (32)"
    )
    max_z: int = Field(100, ge=2, le=200, description="rows of the embedding table (Z < max_z)")
    family: Literal["schnet"] = Field("schnet", description="the model family (schnet | painn)")

    @property
    def n_rbf(self) -> int:
        """Number of Gaussian centres: 0, spacing, ..., < rbf_max (300 by default)."""
        return int(round(self.rbf_max / self.rbf_spacing))


class PaiNNConfig(StrictModel):
    """PaiNN architecture (Schütt, Unke & Gastegger 2021; defaults as the paper's MD17 models): scalar and vector
    features of size ``n_atom_basis``, ``n_interactions`` message + update blocks, ``n_rbf`` radial functions
    ``sin(nπr/r_c)/r`` and a cosine cutoff at ``cutoff`` Å."""

    n_atom_basis: int = Field(128, ge=1, description="scalar and vector feature size F")
    n_interactions: int = Field(3, ge=1, description="message + update blocks")
    n_rbf: int = Field(20, ge=1, description="radial basis functions sin(nπr/r_c)/r, n = 1 … n_rbf")
    cutoff: float = Field(5.0, gt=0, description="cosine cutoff radius in Å")
    shared_filters: bool = Field(False, description="one filter network for every block")
    shared_interactions: bool = Field(False, description="one set of block weights used n_interactions times")
    n_output_hidden: int | None = Field(None, ge=1, description="hidden size of the output MLP; null = F // 2")
    max_z: int = Field(100, ge=2, le=200, description="rows of the embedding table (Z < max_z)")
    epsilon: float = Field(1e-8, gt=0, description="added under the square root of the vector norms")
    family: Literal["painn"] = Field("painn", description="the model family (schnet | painn)")


FAMILIES: dict[str, type[StrictModel]] = {"schnet": ModelConfig, "painn": PaiNNConfig}
"""``model.family`` → its architecture schema (``schnet`` when a spec or model directory names none)."""


def family_of(value: Any) -> str:
    """The family a model section (a mapping or a config) names; ``schnet`` by default."""
    if isinstance(value, dict):
        return value.get("family", "schnet")
    return getattr(value, "family", "schnet")


AnyModelConfig = Annotated[
    Annotated[ModelConfig, Tag("schnet")] | Annotated[PaiNNConfig, Tag("painn")], Discriminator(family_of)]
"""A ``model`` section of either family, told apart by ``family`` (absent: SchNet, as every spec before PaiNN)."""
AnyConfig = ModelConfig | PaiNNConfig  # a validated architecture config of either family


def unknown_family(*given: Any) -> str:
    """The one-line error of a ``model.family`` that names no family."""
    return f"model.family: expected {' or '.join(FAMILIES)} (got {', '.join(map(repr, given))})"


def model_config(values: dict[str, Any]) -> ModelConfig | PaiNNConfig:
    """The architecture config of a ``model`` mapping: its family's schema (pydantic's ValidationError, or a one-line
    ValueError for an unknown family)."""
    family = family_of(values)
    if family not in FAMILIES:
        raise ValueError(unknown_family(family))
    return FAMILIES[family](**values)


def family_key_hint(key: str, family: str) -> str | None:
    """Why ``key`` is not a key of ``family``'s model section when another family has it (else None), e.g.
    ``a painn key; model.family is schnet``."""
    others = [name for name, schema in FAMILIES.items() if name != family and key in schema.model_fields]
    if not others or family not in FAMILIES:
        return None
    return f"a {' / '.join(others)} key; model.family is {family}"


TEST_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_TEST_NAMES = frozenset({"val", "train", "oof", "cv", "best", "ensemble", "fold"})


class DatasetConfig(StrictModel):
    """Where the data comes from, its units and how it is split.

    ``path`` is resolved against the spec file's directory by the orchestrator. With
    ``download`` set and no ``path``, the file is fetched into the cache (``$SWEEP_DATA``).
    """

    path: Path | None = Field(None, description="dataset file or directory (ISO17)")
    download: Literal["md17", "rmd17", "iso17", "qm9"] | None = Field(
        None, description="fetch this dataset into the cache when path is not given"
    )
    molecule: str | None = Field(None, description="MD17/rMD17 molecule, e.g. aspirin")
    format: Literal["auto", "md17", "rmd17", "iso17", "qm9", "spk_db", "ase", "extxyz", "sgdml_xyz"] = "auto"
    energy_unit: str | None = Field(None, description="declare the file's energy unit (overrides the file)")
    length_unit: str | None = Field(None, description="declare the file's length unit (overrides the file)")
    unit: str | None = Field(None, description="convert energies to this unit for training and reports")
    energy_key: str = Field("energy", description="ASE formats: energy property name")
    forces_key: str = Field("forces", description="ASE formats: forces property name")
    iso17_test: Literal["test_within", "test_other"] = Field(
        "test_within", description="ISO17 test set: known molecules (within) or unknown molecules (other)"
    )
    rmd17_split: int | None = Field(None, ge=1, le=5, description="official rMD17 split index_{train,test}_0X.csv")
    qm9_target: Literal["U0", "U", "H", "G"] = "U0"
    qm9_exclude_uncharacterized: bool = True
    n_train: int = Field(1000, ge=1, description="training molecules (paper: 1,000 or 50,000)")
    n_val: int = Field(1000, ge=1, description="validation molecules (early stopping, model choice)")
    n_test: int | None = Field(
        None, ge=1, description="test molecules held out of path; null = all the rest (or the official test set), "
        "or none when test_path is given")
    split_seed: int = 0
    test_path: Path | dict[str, Path] | None = Field(
        None, description="separate test file(s), never trained on: one path (named 'test') or {name: path}")
    test_format: Literal["auto", "ase", "extxyz", "sgdml_xyz", "md17", "rmd17", "spk_db"] = Field(
        "auto", description="format of the test file(s)")
    test_energy_unit: str | None = Field(None, description="declare the test files' energy unit (overrides the files)")
    test_length_unit: str | None = Field(None, description="declare the test files' length unit (overrides the files)")

    @field_validator("energy_unit", "unit", "test_energy_unit")
    @classmethod
    def _energy_unit(cls, v: str | None) -> str | None:
        return None if v is None else canonical_energy_unit(v)

    @field_validator("length_unit", "test_length_unit")
    @classmethod
    def _length_unit(cls, v: str | None) -> str | None:
        return None if v is None else canonical_length_unit(v)

    @model_validator(mode="after")
    def _source(self) -> DatasetConfig:
        if self.path is None and self.download is None:
            raise ValueError("give dataset.path or dataset.download")
        if self.download in ("md17", "rmd17") and self.path is None and not self.molecule:
            raise ValueError(f"dataset.download: {self.download} needs dataset.molecule (e.g. aspirin)")
        if self.download in ("md17", "rmd17") and self.path is None and self.molecule:
            from schnet_model.data.catalog import normalize_molecule  # the one list of MD17/rMD17 molecules

            try:
                canonical = normalize_molecule(self.download, self.molecule)
            except ValueError as e:
                raise ValueError(f"molecule: {e}") from None
            if canonical != self.molecule:
                self.molecule = canonical
        if isinstance(self.test_path, dict):
            if not self.test_path:
                raise ValueError("dataset.test_path: an empty mapping; give {name: file, ...} or one file")
            for name in self.test_path:
                if not TEST_NAME.fullmatch(name) or name in RESERVED_TEST_NAMES:
                    raise ValueError(f"dataset.test_path: test set name {name!r} must be letters, digits and _ "
                                     f"(starting with a letter) and not one of {sorted(RESERVED_TEST_NAMES)}")
            if self.n_test is not None and "test" in self.test_path:
                raise ValueError("dataset.test_path: the name 'test' is the set held out of dataset.path (n_test); "
                                 "name the files otherwise")
        elif self.test_path is not None and self.n_test is not None:
            raise ValueError("dataset: n_test holds a test set out of dataset.path and test_path names a test file; "
                             "to have both, name the files: test_path: {name: file}")
        return self

    def test_files(self) -> dict[str, Path]:
        """The separate test files by name (one ``test_path`` is named ``test``)."""
        if self.test_path is None:
            return {}
        return dict(self.test_path) if isinstance(self.test_path, dict) else {"test": self.test_path}

    def resolve_paths(self, base: Path) -> None:
        """Make relative ``path`` and ``test_path`` entries absolute against ``base`` (the spec's directory)."""
        absolute = lambda p: p if p.is_absolute() else (base / p).resolve()  # noqa: E731
        if self.path is not None:
            self.path = absolute(self.path)
        if isinstance(self.test_path, dict):
            self.test_path = {k: absolute(v) for k, v in self.test_path.items()}
        elif self.test_path is not None:
            self.test_path = absolute(self.test_path)


class TrainingConfig(StrictModel):
    """Optimisation of one model.

    Paper: Adam, learning rate 1e-3 decayed by 0.96 every 100k steps, batch 32, loss
    ``ρ·(E−Ê)² + (1/n)·Σ_i ‖F_i − F̂_i‖²`` with ρ = 0.01.
    """

    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    scheduler: Literal["exponential", "plateau", "cosine"] = Field(
        "exponential",
        description="exponential: lr·decay^(step/decay_steps) (paper; under a time budget it cools down to min_lr "
        "over the run's last `cooldown`); plateau: ReduceLROnPlateau (under a time budget, annealed the same way); "
        "cosine: lr·½(1+cos(π·step/(max_epochs·steps per epoch))), floored at min_lr; under a time budget "
        "(max_time, or a sweep's search.time_budget) it decays over the epochs the budget allows, re-estimated "
        "every epoch",
    )
    lr_decay: float = Field(0.96, gt=0, le=1)
    lr_decay_steps: int = Field(100_000, ge=1)
    cooldown: float = Field(
        0.2, ge=0, le=1, description="exponential or plateau under a time budget (max_time, or a sweep's "
        "search.time_budget): over this last fraction of the run the learning rate anneals by a half cosine "
        "to min_lr (a warmup-stable-decay cooldown; the paper's decay barely begins within a budget); 0 = never")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(10, ge=1, description="epochs without improvement")
    min_lr: float = Field(0.0, ge=0)
    rho: float = Field(0.01, ge=0, description="energy weight ρ of the loss")
    use_forces: bool | None = Field(
        None, description="train on forces; null = whenever the dataset has them"
    )
    max_epochs: int = Field(1000, ge=1)
    max_time: float | None = Field(None, gt=0, description="wall-clock budget in seconds")
    early_stopping_patience: int | None = Field(
        100, ge=1, description="stop after this many epochs without improvement; null = off"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; null = off")
    seed: int = 0
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, auto")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; null = torch's")
    compile_after: int | None = Field(
        COMPILE_AFTER, ge=0, description="CPU only: training/prediction calls run eagerly before the fused kernels are "
        "compiled by torch.compile (20–30 s once per process, recovered only by longer runs); "
        "0 = at once, null = never")

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self
