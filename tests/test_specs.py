"""The shipped search spaces: one spec per dataset family, the molecule chosen with --set, all valid."""

from __future__ import annotations

import pytest
from conftest import ROOT

from orchestrator.spec.load import SpecError
from orchestrator.spec.sweep import load_sweep_spec
from schnet_model.data.download import known_molecules


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates_and_shares_the_machine(path):
    spec = load_sweep_spec(path)
    assert spec.resources.auto or path.name == "quickstart.yaml"  # explicit only where the quickstart says so


FAMILIES = (("md17", "md17"), ("md17_50k", "md17"), ("rmd17", "rmd17"))


@pytest.mark.parametrize("family, dataset, molecule", [(f, d, m) for f, d in FAMILIES for m in known_molecules(d)],
                         ids=lambda v: str(v))
def test_one_spec_per_family_takes_every_molecule(family, dataset, molecule):
    spec = load_sweep_spec(ROOT / "search_spaces" / f"{family}.yaml", [f"dataset.molecule={molecule}"])
    assert spec.dataset.molecule == molecule and spec.name == f"{family}_{molecule}"
    assert spec.train_spec().name == spec.name and spec.tracking.experiment is None  # the experiment is the name


@pytest.mark.parametrize("family, dataset", FAMILIES)
def test_an_unknown_molecule_is_a_one_line_error_naming_the_known_ones(family, dataset):
    with pytest.raises(SpecError, match=rf"{family}.yaml: dataset: molecule: unknown {dataset} molecule 'asprin' "
                                        r"\(known: aspirin, .*\) \(from --set dataset.molecule=asprin\)"):
        load_sweep_spec(ROOT / "search_spaces" / f"{family}.yaml", ["dataset.molecule=asprin"])
