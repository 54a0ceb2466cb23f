"""The module graph stays one-way and every concept keeps one owner (see the README's Layout):
these checks read the source, so a change that breaks a rule fails here, not in review."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "studyrunner"
MODULES = {p.stem: ast.parse(p.read_text()) for p in sorted(PACKAGE.glob("*.py"))}


def _typing_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    return {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(block)
    }


def _imports(tree: ast.Module) -> set[str]:
    """Top-level package names and studyrunner module names a module imports at run time (anywhere in it)."""
    found = set()
    skip = _typing_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y
                found.add(node.module.split(".")[0] if node.module else "")
                found |= {a.name for a in node.names} if not node.module else set()
            elif node.module:
                found.add(node.module.split(".")[0])
    return found


def test_no_function_is_over_60_lines():
    long = [
        f"{name}.{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for name, tree in MODULES.items()
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.end_lineno - f.lineno + 1 > 60
    ]
    assert not long


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{name} imports {node.module}.{a.name}"
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level
        for a in node.names
        if a.name.startswith("_")
    ]
    assert not private


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("mlflow", {"tracking"}),
        ("matplotlib", {"plots"}),
        ("typer", {"cli"}),
    ],
)
def test_third_party_packages_have_one_owner(package, allowed):
    assert {name for name, tree in MODULES.items() if package in _imports(tree)} <= allowed


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("engine", {"optuna", "mlflow", "typer", "yaml", "study", "objective", "tracking", "results", "report"}),
        ("report", {"optuna", "mlflow"}),
        ("plots", {"optuna", "mlflow"}),
        ("study", {"results", "report", "plots"}),  # the driver does not import the reporting layer
        ("objective", {"results", "report", "plots"}),
        ("states", {"optuna", "mlflow"}),
    ],
)
def test_layers_do_not_reach_up(module, forbidden):
    assert not _imports(MODULES[module]) & forbidden


def test_every_public_name_in_all_exists():
    for name, tree in MODULES.items():
        names = [getattr(t, "id", "") for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
        if "__all__" not in names:
            continue
        module = __import__("studyrunner" if name == "__init__" else f"studyrunner.{name}", fromlist=["_"])
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"studyrunner.{name}.__all__ names {missing}"


def test_the_engine_runs_without_optuna_mlflow_typer_or_yaml_loaded():
    code = "import sys, studyrunner.engine; print(sorted({'optuna', 'mlflow', 'typer', 'yaml'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_package_exports_its_public_api_lazily():
    import studyrunner

    assert all(getattr(studyrunner, name) is not None for name in studyrunner.__all__)
    code = "import sys, studyrunner; print(sorted({'torch', 'optuna', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
