"""`sweep ensemble --export DIR`: a torch.export ensemble that runs where only torch is installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICKSTART_DATA

from schnet_model.ensemble import SchNetEnsemble

STANDALONE = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("schnet_model") is None and importlib.util.find_spec("orchestrator") is None
import torch
sys.path.insert(0, sys.argv[1])
from load_ensemble import load, ExportError
ens = load(sys.argv[1])
frames = json.loads(open(sys.argv[2]).read())
out = []
for Z, R in frames:
    r = ens(Z, R)
    out.append({k: v.tolist() for k, v in r.items()})
try:
    ens([6, 17, 1], [[0, 0, 0], [1.7, 0, 0], [-1, 0, 0]])
except ExportError as e:
    out.append(str(e))
print(json.dumps(out))
"""


def _torch_only(tmp_path: Path) -> Path:
    """A directory holding torch and what it requires (symlinks to the installed packages), nothing else of this
    environment: a user's bare Python with torch, whether this project is installed editable or not."""
    out = tmp_path / "torch_only"
    out.mkdir()
    seen, todo = set(), ["torch"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # an optional requirement not installed
            continue
        todo += [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".." and not f.parts[0].endswith(".pth")}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (out / top).exists():
                (out / top).symlink_to(src)
    assert (out / "torch").exists() and not (out / "schnet_model").exists() and not (out / "orchestrator").exists()
    return out


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python (run with -S: no site-packages, no .pth hooks) sees torch and its requirements
    only."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    path = tmp_path / "torch_only"
    env["PYTHONPATH"] = str(path if path.exists() else _torch_only(tmp_path))
    return env


def test_exported_ensemble_runs_with_torch_only_and_equals_sweep_predict(trained_ensemble, tmp_path):
    import ase.io
    from ase import Atoms

    z = np.load(QUICKSTART_DATA)
    frames = [Atoms(numbers=z["z"], positions=z["R"][i]) for i in (5, 6, 7)]
    ase.io.write(tmp_path / "mols.xyz", frames)
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "ensemble", str(trained_ensemble), "--export", "exp",
                        "--predict", "mols.xyz", "-o", "pred.extxyz"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "standalone ensemble exported to exp" in r.stdout
    man = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert (man["energy_unit"] == "kcal/mol" and man["length_unit"] == "Å" and man["k"] == 3
            and man["elements"] == [1, 6, 8])
    assert set(man["files"]) == {"ensemble.pt2", "load_ensemble.py"} and all(
        len(v) == 64 for v in man["files"].values())
    (tmp_path / "frames.json").write_text(json.dumps([[f.numbers.tolist(), f.positions.tolist()] for f in frames]))
    (tmp_path / "standalone.py").write_text(STANDALONE)
    s = subprocess.run([sys.executable, "-S", "standalone.py", str(tmp_path / "exp"), "frames.json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=_isolated_env(tmp_path))
    assert s.returncode == 0, s.stderr[-3000:]
    *outs, err = json.loads(s.stdout)
    assert "elements not seen in training: [17]" in err
    pred = ase.io.read(tmp_path / "pred.extxyz", ":")
    for o, p in zip(outs, pred, strict=True):  # float64 export vs the float32 members of `sweep ensemble --predict`
        assert o["energy"] == pytest.approx(p.get_potential_energy(), rel=1e-6)
        np.testing.assert_allclose(o["forces"], p.get_forces(), rtol=1e-4, atol=1e-4)
        assert o["energy_std"] == pytest.approx(p.info["energy_std"], rel=1e-3, abs=1e-5)
        np.testing.assert_allclose(o["forces_std"], p.arrays["forces_std"], rtol=1e-3, atol=1e-4)
        assert len(o["members_energy"]) == 3 and np.array(o["members_forces"]).shape == (3, 9, 3)
    # a tampered file is refused before it is loaded
    with open(tmp_path / "exp" / "ensemble.pt2", "ab") as f:
        f.write(b"\0")
    s = subprocess.run([sys.executable, "-S", "standalone.py", str(tmp_path / "exp"), "frames.json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=_isolated_env(tmp_path))
    assert s.returncode != 0 and "ensemble.pt2: sha256 differs from manifest.json" in s.stderr


def test_exported_program_takes_any_molecule_size(trained_ensemble, tmp_path):
    from schnet_model.export import export_ensemble

    ens = SchNetEnsemble.load(trained_ensemble).to(dtype=torch.float64)
    export_ensemble(ens, tmp_path / "exp")
    sys.path.insert(0, str(tmp_path / "exp"))
    try:
        from load_ensemble import load
    finally:
        sys.path.pop(0)
    exp = load(tmp_path / "exp")
    rng = np.random.default_rng(0)
    for n in (3, 4, 17):  # water-like to bigger: one program, dynamic atom count
        Z = rng.choice([1, 6, 8], n)
        R = rng.normal(0, 1.5, (n, 3))
        ref = ens.predict_arrays(Z, R, members=True)
        out = exp(Z, R)
        assert float(out["energy"]) == pytest.approx(ref.energy[0], rel=1e-9)
        np.testing.assert_allclose(out["forces"].numpy(), ref.forces, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(out["members_energy"].numpy(), ref.members_energy[:, 0], rtol=1e-9)


def test_loader_refuses_an_archive_that_would_unpickle(trained_ensemble, tmp_path):
    import hashlib
    import zipfile

    from schnet_model.export import export_ensemble

    export_ensemble(SchNetEnsemble.load(trained_ensemble), tmp_path / "exp")
    src, bad = tmp_path / "exp" / "ensemble.pt2", tmp_path / "bad.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"]))
                config["config"][first]["use_pickle"] = True
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    bad.replace(src)
    man = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    man["files"]["ensemble.pt2"] = hashlib.sha256(src.read_bytes()).hexdigest()  # a consistent but hostile export
    (tmp_path / "exp" / "manifest.json").write_text(json.dumps(man))
    sys.path.insert(0, str(tmp_path / "exp"))
    try:
        import importlib

        import load_ensemble

        importlib.reload(load_ensemble)
        with pytest.raises(load_ensemble.ExportError, match="stores tensors with pickle; refusing to load"):
            load_ensemble.load(tmp_path / "exp")
    finally:
        sys.path.pop(0)
