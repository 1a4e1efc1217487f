"""Project rules that can be checked mechanically."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


def test_model_package_never_imports_orchestrator_ray_or_mlflow():
    forbidden = {"orchestrator", "ray", "mlflow", "optuna"}
    for path in (ROOT / "schnet_model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path}: imports {n}"


def test_no_pickle_loading_anywhere():
    for path in list((ROOT / "schnet_model").rglob("*.py")) + list((ROOT / "orchestrator").rglob("*.py")):
        text = path.read_text()
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path
        if "torch.load(" in text:
            assert "weights_only=True" in text, path


@pytest.mark.skipif(shutil.which("ruff") is None and not (ROOT / ".venv" / "bin" / "ruff").exists(),
                    reason="ruff not installed")
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    r = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_entry_point_imports():
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout


def test_one_schnet_computation_the_core():
    """SchNet, the ensemble and stacked training all go through nn/core.py: nothing else uses its parts."""
    parts = {"schnet_model.nn.atomwise", "schnet_model.nn.filters", "schnet_model.nn.filters_dense"}
    allowed = {ROOT / "schnet_model" / "nn" / name
               for name in ("core.py", "atomwise.py", "filters.py", "filters_dense.py")}
    for path in list((ROOT / "schnet_model").rglob("*.py")) + list((ROOT / "orchestrator").rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in parts:
                raise AssertionError(f"{path}: imports {node.module}; call schnet_model.nn.core instead")


def test_the_read_only_commands_start_without_ray():
    """`sweep status`, `sweep list` and `sweep ensemble` read MLflow only: importing them must not import Ray (seconds
    of start-up, and a dependency a laptop reading a cluster's store need not load)."""
    mods = ["orchestrator.cli", *(m for m in _modules() if m.split(".")[1] in RAY_FREE_STAGES and m not in RAY_ALLOWED)]
    code = (f"import sys, {', '.join(mods)}; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))[:5])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_bad_spec_is_reported_before_torch_ray_or_mlflow_is_imported(tmp_path, command):
    """A misspelt key must not cost the seconds of importing torch, Ray and MLflow: the spec is validated first."""
    (tmp_path / "s.yaml").write_text("name: x\ndataset: {path: d.npz}\ntraining: {lrr: 0.1}\n")
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom orchestrator.cli import app\n"
            f"r = CliRunner().invoke(app, [{command!r}, 's.yaml'])\n"
            "print(r.exit_code, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow'}))\n"
            "print(r.output)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    first, *rest = r.stdout.splitlines()
    assert first == "2 []", r.stdout + r.stderr
    assert "training.lrr: unknown key" in " ".join(rest), r.stdout

# The orchestrator's stages, in pipeline order, and which stages each may import (a stage always may import itself).
# The top-level modules (cli, train, data_info) are commands and may import any stage.
STAGE_IMPORTS = {
    "spec": set(),
    "tracking": {"spec"},
    "cluster": {"spec"},
    "search": {"spec", "tracking", "cluster"},
    "ensemble": {"spec", "tracking"},
    "learn": {"spec", "tracking", "search", "ensemble"},  # active learning: sweeps and ensembles, round after round
}
RAY_FREE_STAGES = {"spec", "tracking", "ensemble"}
RAY_ALLOWED = {"orchestrator.tracking.callback"}  # the Tune callback, imported by the search driver only


def _modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "orchestrator").rglob("*.py")
                  if p.name != "__init__.py")


def _imports(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_every_orchestrator_module_belongs_to_a_stage_or_is_a_command():
    commands = {"orchestrator.cli", "orchestrator.train", "orchestrator.data_info"}
    for m in _modules():
        assert m in commands or m.split(".")[1] in STAGE_IMPORTS, (
            f"{m}: put it in a stage subpackage ({', '.join(STAGE_IMPORTS)})")


def test_stages_import_only_earlier_stages():
    """spec → search (trials of k folds) → tracking (MLflow) → ensemble: a stage imports only what it builds on, and
    no stage imports a command (cli, train, data_info)."""
    for path in (ROOT / "orchestrator").rglob("*.py"):
        parts = path.relative_to(ROOT / "orchestrator").parts
        if len(parts) == 1:
            continue  # a command
        stage = parts[0]
        for name in _imports(path):
            if not name.startswith("orchestrator"):
                continue
            target = name.split(".")[1] if "." in name else ""
            assert target == stage or target in STAGE_IMPORTS[stage], f"{path.relative_to(ROOT)}: imports {name}; " \
                f"the {stage} stage may import only {sorted(STAGE_IMPORTS[stage] | {stage})}"


def test_the_ray_free_stages_do_not_import_ray():
    for m in _modules():
        if m.split(".")[1] in RAY_FREE_STAGES and m not in RAY_ALLOWED:
            path = ROOT.joinpath(*m.split(".")).with_suffix(".py")
            bad = [n for n in _imports(path) if n.split(".")[0] == "ray"]
            assert not bad, f"{m}: imports {bad}; the {m.split('.')[1]} stage runs without Ray"


def _top_level_edges(package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports at module level (``from pkg import sub`` counts as ``pkg.sub``;
    package ``__init__`` files are left out: they only re-export)."""
    root = ROOT / package
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for p in root.rglob("*.py") if p.name != "__init__.py"}
    edges: dict[str, set[str]] = {}
    for m, path in mods.items():
        out = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
                out |= {node.module} & mods.keys()
                out |= {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
        edges[m] = out
    return edges


@pytest.mark.parametrize("package", ["schnet_model", "orchestrator"])
def test_no_import_cycles_between_modules(package):
    """A module imported at module level never imports its importer back, directly or through others (the readers
    are one table in data/load.py, not modules registering themselves into it)."""
    edges = _top_level_edges(package)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(n):] + [m, n]) if n in path else
                                     f"import cycle: {' → '.join([*path, m, n])}")
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def test_readers_do_not_know_the_reader_table():
    """The readers are plain functions; data/load.py's READERS table names them (no registration on import, no
    cycle)."""
    for path in (ROOT / "schnet_model" / "data").glob("*.py"):
        if path.name in ("load.py", "heldout.py", "__init__.py"):
            continue
        assert "schnet_model.data.load" not in _imports(path), f"{path.name} imports schnet_model.data.load"


def _import_graph() -> dict[str, set[str]]:
    """Module → the modules of this project it imports, at any depth of the file (lazy imports count: a circle
    through a function-level import is still a circle). ``from pkg import submodule`` depends on the submodule."""
    mods = {}
    for pkg in ("schnet_model", "orchestrator"):
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
                deps |= subs or ({node.module} & mods.keys())
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & mods.keys()
        graph[name] = deps - {name}
    return graph


def test_no_import_circles():
    """No module reaches itself through imports (schnet_model.config once reached itself through the downloader:
    config → download → iso17 → formats_ase → dataset → config)."""
    graph = _import_graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " → ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_data_never_imports_the_network_or_training():
    """schnet_model.data is below the model: nn and training read its types, never the other way round."""
    for m, deps in _import_graph().items():
        if m.startswith("schnet_model.data"):
            bad = sorted(d for d in deps if d.startswith(("schnet_model.nn", "schnet_model.training",
                                                          "schnet_model.ensemble")))
            assert not bad, f"{m} imports {bad}"


def test_no_private_name_is_imported_from_another_module():
    for pkg in ("schnet_model", "orchestrator"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                        "schnet_model", "orchestrator"):
                    private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    assert not private, f"{path}: imports {private} from {node.module}; make it public there"


MAX_POSITIONAL = 5  # besides self/cls; past it, parameters are keyword-only (a call names what it passes)
MAX_FUNCTION_LINES = 120


def _functions(pkg: str):
    for path in sorted((ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path.relative_to(ROOT), node


def test_orchestrator_calls_name_what_they_pass():
    """A function of the orchestrator takes at most MAX_POSITIONAL positional parameters (``run_select`` once took
    16); the CLI's Typer commands, whose parameters are the command line's options, excepted."""
    for path, f in _functions("orchestrator"):
        if path.name == "cli.py":
            continue
        positional = [a.arg for a in f.args.posonlyargs + f.args.args if a.arg not in ("self", "cls")]
        assert len(positional) <= MAX_POSITIONAL, (
            f"{path}:{f.lineno} {f.name} takes {len(positional)} positional parameters; make those past the "
            f"{MAX_POSITIONAL}th keyword-only (*)")


def test_orchestrator_functions_are_short():
    """``run_sweep`` once ran 154 lines juggling new, resume and extend: split what is longer than this."""
    for path, f in _functions("orchestrator"):
        n = f.end_lineno - f.lineno + 1
        assert n <= MAX_FUNCTION_LINES, f"{path}:{f.lineno} {f.name} is {n} lines; split it"
