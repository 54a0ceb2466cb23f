"""The package's shape, read from the source: wings that import only downward, no cycle, one owner
per third-party integration, short functions and modules. A change that breaks a rule fails here,
not in review (see the README's Layout)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "studyrunner"

# Wings from the bottom up: a module may import studyrunner modules of its own wing or of wings below it.
ORDER = ["root", "engine", "track", "search", "narrative", "report", "bench", "cli"]
ROOT_LEAVES = {"config", "errors", "states", "stores", "plots", "lazy", "files", "extras"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
LINES = {_name(p): len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else "root"


def _typing_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    return {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(block)
    }


def _imports(tree: ast.Module) -> set[str]:
    """Dotted names a module imports at run time, anywhere in it (function-level imports included)."""
    found: set[str] = set()
    skip = _typing_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert not node.level, "studyrunner imports its own modules by absolute name"
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return found


def _internal(tree: ast.Module) -> set[str]:
    return {m for m in _imports(tree) if m in MODULES and m != "studyrunner"}


def _third_party(tree: ast.Module) -> set[str]:
    return {m.split(".")[0] for m in _imports(tree) if not m.startswith("studyrunner")}


def test_the_package_holds_the_wings_and_only_the_shared_leaves_at_its_root():
    wings = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert wings == set(ORDER[1:])
    leaves = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert leaves == ROOT_LEAVES


def test_wings_import_only_their_own_wing_or_the_wings_below():
    upward = [
        f"{name} ({wing(name)}) imports {target} ({wing(target)})"
        for name, tree in MODULES.items()
        if not name.endswith("__main__") and name != "studyrunner"
        for target in _internal(tree)
        if ORDER.index(wing(target)) > ORDER.index(wing(name))
    ]
    assert not upward


def test_there_is_no_import_cycle():
    graph = {name: _internal(tree) - {name} for name, tree in MODULES.items() if name != "studyrunner"}
    graph = {n: {t for t in deps if t in graph and not (t.count(".") < n.count(".") and n.startswith(t + "."))}
             for n, deps in graph.items()}  # fmt: skip
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path[path.index(node) :], node))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, (*path, node))
        done.add(node)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize(
    ("package", "owner"),
    [("mlflow", "track"), ("typer", "cli"), ("rich", "cli")],
)
def test_an_integration_is_imported_by_its_wing_only(package, owner):
    users = {name for name, tree in MODULES.items() if package in _third_party(tree)}
    assert {wing(u) for u in users} <= {owner}, users


def test_matplotlib_is_imported_by_plots_only():
    assert {n for n, tree in MODULES.items() if "matplotlib" in _third_party(tree)} <= {"studyrunner.plots"}


@pytest.mark.parametrize(
    ("scope", "forbidden"),
    [
        ("engine", {"optuna", "mlflow", "typer", "yaml", "pandas"}),
        ("root", {"optuna", "mlflow", "typer", "pandas"}),  # but stores, which opens the Optuna storage
        ("track", {"optuna", "typer"}),
    ],
)
def test_lower_wings_do_not_import_the_tools_of_higher_ones(scope, forbidden):
    found = {n: sorted(_third_party(t) & forbidden) for n, t in MODULES.items() if wing(n) == scope}
    found = {n: tools for n, tools in found.items() if tools and not (n == "studyrunner.stores" and tools == ["optuna"])}
    assert not found


def test_no_module_is_over_500_lines_and_no_function_over_60():
    long_modules = [f"{name} ({n} lines)" for name, n in LINES.items() if n > 500]
    long_functions = [
        f"{name}.{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for name, tree in MODULES.items()
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.end_lineno - f.lineno + 1 > 60
    ]
    assert not long_modules and not long_functions


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{name} imports {node.module}.{a.name}"
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("studyrunner")
        for a in node.names
        if a.name.startswith("_") and node.module != name
    ]
    assert not private


def test_nothing_outside_extras_catches_an_import_error():
    catching = [
        name
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler) and "ImportError" in ast.unparse(node.type or ast.Name("x"))
    ]
    assert set(catching) <= {"studyrunner.extras", "studyrunner.stores"}  # stores: SQLAlchemy's driver check


def test_every_wing_re_exports_exactly_its_modules_public_names():
    import importlib

    for name in [n for n in MODULES if wing(n) != "root" and n.count(".") == 1]:
        package = importlib.import_module(name)
        publics = set()
        for module in [m for m in MODULES if m.startswith(name + ".")]:
            publics |= set(getattr(importlib.import_module(module), "__all__", []))
        expected = {"app"} if name.endswith(".cli") else publics  # the command line exports its typer app only
        assert set(package.__all__) == expected, name
        missing = [n for n in package.__all__ if getattr(package, n, None) is None]
        assert not missing, f"{name}.__all__ names {missing}"


def test_the_engine_runs_without_optuna_mlflow_typer_or_yaml_loaded():
    code = (
        "import sys, studyrunner.engine as e; e.fit; e.load_splits; e.resolve_config; "
        "print(sorted({'optuna', 'mlflow', 'typer', 'yaml'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_package_and_its_wings_export_their_public_api_lazily():
    import studyrunner

    assert all(getattr(studyrunner, name) is not None for name in studyrunner.__all__)
    code = (
        "import sys, studyrunner, studyrunner.search, studyrunner.report, studyrunner.track; "
        "print(sorted({'torch', 'optuna', 'mlflow', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
