"""The shipped search spaces: one spec per dataset family, the molecule chosen with --set, all valid."""

from __future__ import annotations

import pytest
from conftest import ROOT

from orchestrator.spec import SpecError
from orchestrator.sweep_spec import load_sweep_spec
from schnet_model.data.download import known_molecules


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates_and_shares_the_machine(path):
    spec = load_sweep_spec(path)
    assert spec.resources.auto or path.name == "quickstart.yaml"  # explicit only where the quickstart says so


@pytest.mark.parametrize("family, dataset", [("md17", "md17"), ("md17_50k", "md17"), ("rmd17", "rmd17")])
def test_one_spec_per_family_takes_every_molecule(family, dataset):
    for molecule in known_molecules(dataset):
        spec = load_sweep_spec(ROOT / "search_spaces" / f"{family}.yaml", [f"dataset.molecule={molecule}"])
        assert spec.dataset.molecule == molecule and spec.name == f"{family}_{molecule}"
        assert spec.train_spec().name == spec.name
    with pytest.raises(SpecError, match=rf"{family}.yaml: dataset: molecule: unknown {dataset} molecule 'asprin' "
                                        r"\(known: aspirin, .*\) \(from --set dataset.molecule=asprin\)"):
        load_sweep_spec(ROOT / "search_spaces" / f"{family}.yaml", ["dataset.molecule=asprin"])
