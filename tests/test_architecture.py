"""The package's shape as tests: import layers, no import circle, no branch on a source's name, short functions."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "srpipe"
SOURCE_NAMES = {"sample", "sentinelhub", "synthetic"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every srpipe module `path` imports (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n.startswith("srpipe")}


def test_no_stage_imports_the_cluster_layer_and_inference_does_not_import_training():
    package = PACKAGE
    edge = {package / "cli.py", package / "__main__.py"}
    for path in package.rglob("*.py"):
        if path in edge or package / "cluster" in path.parents:
            continue
        assert not any(n.startswith("srpipe.cluster") for n in _imports(path)), path
    for name in ("infer.py", "evaluate.py", "mosaic.py", "models/trained.py"):
        assert not any(n.startswith("srpipe.train") for n in _imports(package / name)), name
    torch_side = ("srpipe.infer", "srpipe.infer_data", "srpipe.models")  # infer_record is mosaic's torch-free input
    assert not any(
        n.startswith(torch_side) and not n.startswith("srpipe.infer_record") for n in _imports(package / "mosaic.py")
    )


def test_no_function_in_the_package_is_over_80_lines():
    long = []
    for path in (REPO / "srpipe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def _edges(path: Path) -> set[str]:
    """The srpipe modules `path` imports, top level or inside functions: `from a import b` is a.b when a.b is a
    module, else a (TYPE_CHECKING imports count too: a circle there is a circle in the design)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srpipe"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {node.module}
            if len(subs) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("srpipe")}
    return found & MODULES.keys()


def _graph() -> dict[str, set[str]]:
    """{module: the srpipe modules it imports}, every edge kept (a package's __init__ included)."""
    return {name: _edges(path) for name, path in MODULES.items()}


def test_the_package_has_no_import_circle():
    try:
        order = list(graphlib.TopologicalSorter(_graph()).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None
    assert order.index("srpipe.grid") < order.index("srpipe.sources") < order.index("srpipe.plan")
    assert order.index("srpipe.evaluation.context") < order.index("srpipe.evaluate")


def test_the_circle_test_finds_a_circle():
    graph = _graph()
    graph["srpipe.grid"] = graph["srpipe.grid"] | {"srpipe.plan"}  # the circle the plan module removed
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        assert "srpipe.grid" in exc.args[1] and "srpipe.plan" in exc.args[1]
    else:
        raise AssertionError("a grid -> plan -> grid circle went unnoticed")


def _name_branches(path: Path) -> list[str]:
    """Comparisons in `path` that ask a source's name: `<x>.source.name == ...`, `source.name in (...)`, or a
    source's name as a literal compared with anything."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
        asks = any(
            isinstance(o, ast.Attribute)
            and o.attr == "name"
            and (getattr(o.value, "attr", None) == "source" or getattr(o.value, "id", None) == "source")
            for o in operands
        )
        if asks or literals & SOURCE_NAMES:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_sources_branches_on_a_source_name():
    outside = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "sources" not in p.parents]
    found = [line for path in outside for line in _name_branches(path)]
    assert not found, found
    inside = [line for p in (PACKAGE / "sources").rglob("*.py") for line in _name_branches(p)]
    assert any("sources/__init__.py" in line for line in inside)  # the factory: the one place that may ask


def test_executors_call_the_chain_surface_only():
    for path in (PACKAGE / "cluster").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srpipe.chain"):
                assert node.module == "srpipe.chain", f"{path.name} imports {node.module}: use srpipe.chain's surface"
                assert not any(a.name.startswith("_") for a in node.names), path


def test_no_module_imports_another_modules_private_name():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srpipe"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, f"{path.relative_to(REPO)} imports {private} from {node.module}"


def test_the_cli_the_chain_and_mosaic_units_import_no_torch():
    code = "import sys, srpipe.cli, srpipe.chain, srpipe.mosaic_units; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
