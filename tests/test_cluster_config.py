"""cluster.yaml and cluster.onprem.yaml pass Ray's own cluster-config validation and pin the project's Ray."""

from __future__ import annotations

import copy
import re
import tomllib

import pytest
import yaml
from conftest import ROOT

CONFIGS = ["cluster.yaml", "cluster.onprem.yaml"]


def project_ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==([\w.]+)", d.strip()))]
    assert len(pins) == 1, deps
    return pins[0]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def validated(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_accepts_the_cluster_config(name):
    cfg = validated(load(name))
    assert cfg["file_mounts"]  # the repository (and the Ray token) go to every node
    if cfg["provider"]["type"] == "aws":
        head = cfg["available_node_types"][cfg["head_node_type"]]
        assert head["resources"] == {"CPU": 0}  # no trial or fold on the head
        workers = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
        assert {t["node_config"]["InstanceType"] for t in workers} >= {"g5.xlarge", "g5.12xlarge"}
        assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers)
    else:
        assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
        assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert any("sweep mlflow-server" in c for c in cfg["head_start_ray_commands"])


def test_validation_is_not_vacuous():
    bad = load("cluster.yaml")
    bad["available_node_types"]["gpu_1x"]["min_wokers"] = 1  # a typo: Ray's schema forbids unknown keys
    with pytest.raises(Exception, match="min_wokers"):
        validated(bad)


@pytest.mark.parametrize("name", CONFIGS)
def test_nodes_install_the_projects_ray_and_this_package(name):
    pin = project_ray_pin()
    commands = " ".join(load(name)["setup_commands"])
    pinned = re.findall(r"ray(?:\[[^\]]*\])?==([\w.]+)", commands)
    assert pinned, f"{name}: setup_commands pin no Ray version"
    assert set(pinned) == {pin}, f"{name} installs Ray {sorted(set(pinned))}, pyproject.toml pins ray=={pin}"
    assert re.search(r"pip install .*-e \S*sweep\[cluster\]", commands), commands
    assert re.search(r"torch==[\d.]+(?!\+cpu)", commands) and "whl/cpu" not in commands
