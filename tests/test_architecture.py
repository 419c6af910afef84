"""The package's shape as tests: import layers, no import circle, no branch on a source's name, short functions."""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
import typing
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "srpipe"
STAGE_PACKAGES = (  # the stages, in data-flow order: below them data/ and models/, above them chain/ and cluster/
    "srpipe.plan",
    "srpipe.sources",
    "srpipe.download",
    "srpipe.curate",
    "srpipe.training",
    "srpipe.infer",
    "srpipe.mosaic",
    "srpipe.evaluation",
)
LAYOUT_DOC = REPO / "docs" / "layout.md"


def _factory_names() -> set[str]:
    """The names `make_source` (the source registry) opens: the literals its `cfg.name == ...` branches compare."""
    tree = ast.parse((PACKAGE / "sources" / "__init__.py").read_text())
    factory = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "make_source")
    return {
        c.value
        for node in ast.walk(factory)
        if isinstance(node, ast.Compare)
        for c in node.comparators
        if isinstance(c, ast.Constant) and isinstance(c.value, str)
    }


SOURCE_NAMES = _factory_names()


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


def _imports_of(package: str) -> set[str]:
    """Every srpipe module that a module of `package` (dotted, a package or a module) imports."""
    return {
        n for name, path in MODULES.items() if name == package or name.startswith(package + ".") for n in _edges(path)
    }


def _reaches(names: set[str], packages: tuple[str, ...]) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in packages)}


def test_no_stage_imports_the_cluster_layer_and_inference_does_not_import_training():
    package = PACKAGE
    edge = {package / "cli.py", package / "__main__.py"}
    for path in package.rglob("*.py"):
        if path in edge or package / "cluster" in path.parents:
            continue
        assert not any(n.startswith("srpipe.cluster") for n in _imports(path)), path
    for name in ("srpipe.infer", "srpipe.mosaic", "srpipe.models"):
        assert not _reaches(_imports_of(name), ("srpipe.training",)), name
    torch_side = ("srpipe.infer", "srpipe.models", "srpipe.training")  # infer.record is mosaic's torch-free input
    assert not _reaches(_imports_of("srpipe.mosaic"), torch_side) - {"srpipe.infer.record", "srpipe.infer"}


def test_no_stage_imports_a_later_stage():
    stages = [p for p in STAGE_PACKAGES if p != "srpipe.sources"]  # sources serve plan, download and infer alike
    for i, stage in enumerate(stages):
        assert not _reaches(_imports_of(stage), tuple(stages[i + 1 :])), f"{stage} imports a later stage"


def test_the_low_layers_import_no_stage_and_sources_import_no_later_stage():
    for low in ("srpipe.data", "srpipe.models"):
        assert not _reaches(_imports_of(low), STAGE_PACKAGES), low
    later = tuple(p for p in STAGE_PACKAGES if p != "srpipe.sources")
    assert not _reaches(_imports_of("srpipe.sources"), (*later, "srpipe.chain")), "sources import a stage"


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
    assert order.index("srpipe.data.grid") < order.index("srpipe.sources") < order.index("srpipe.plan.stage")
    assert order.index("srpipe.evaluation.context") < order.index("srpipe.evaluation.stage")


def test_the_circle_test_finds_a_circle():
    graph = _graph()
    graph["srpipe.data.grid"] = graph["srpipe.data.grid"] | {"srpipe.plan.stage"}  # the circle the plan module removed
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        assert "srpipe.data.grid" in exc.args[1] and "srpipe.plan.stage" in exc.args[1]
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


def test_the_source_names_are_the_registry_s_and_the_config_s():
    from srpipe.config import SourceName

    assert SOURCE_NAMES == set(typing.get_args(SourceName)) and "stac" in SOURCE_NAMES


def test_no_module_outside_sources_branches_on_a_source_name():
    outside = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "sources" not in p.parents]
    found = [line for path in outside for line in _name_branches(path)]
    assert not found, found
    inside = [line for p in (PACKAGE / "sources").rglob("*.py") for line in _name_branches(p)]
    assert inside and all("sources/__init__.py" in line for line in inside), inside  # the factory alone may ask


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
    code = "import sys, srpipe.cli, srpipe.chain, srpipe.mosaic.units; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def _role(path: Path) -> str:
    """The module's one-line role: the first paragraph of its docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")


def layout_table() -> str:
    """docs/layout.md's module table, from each module's docstring (`python -m tests.test_architecture`)."""
    rows = [f"| `{p.relative_to(REPO).as_posix()}` | {_role(p)} |" for p in sorted(PACKAGE.rglob("*.py"))]
    return "\n".join(["| module | role |", "| --- | --- |", *rows])


def _listed_modules() -> list[str]:
    """The modules of the rows of docs/layout.md's module table (its "## Modules" section) that give a role."""
    table = LAYOUT_DOC.read_text().partition("\n## Modules\n")[2]
    return re.findall(r"^\| `(srpipe/[^`]+\.py)` \| *[^|\s]", table, flags=re.MULTILINE)


def _package_modules() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py"))


def _layout_problems(modules: list[str], listed: list[str]) -> list[str]:
    """What docs/layout.md's table gets wrong about `modules`: a module twice, without a row, or gone."""
    problems = [f"listed twice: {m}" for m in sorted(set(listed)) if listed.count(m) > 1]
    problems += [f"no row (python -m tests.test_architecture prints them): {m}" for m in modules if m not in listed]
    return problems + [f"listed but not in the package: {m}" for m in listed if m not in modules]


def test_the_layout_doc_lists_every_module_once_with_its_role():
    problems = _layout_problems(_package_modules(), _listed_modules())
    assert not problems, problems
    assert all(_role(REPO / m) for m in _package_modules()), "a module without a docstring (its role)"


def test_a_module_added_without_a_row_fails_the_layout_check():
    added = "srpipe/data/added.py"
    problems = _layout_problems([*_package_modules(), added], _listed_modules())
    assert problems == [f"no row (python -m tests.test_architecture prints them): {added}"]


def _target_names(stage) -> list[str]:
    return [t for t in (stage.target, stage.batch, stage.units, stage.reads_units) if t]


def test_every_registry_target_names_a_function_of_the_package():
    from srpipe.chain.registry import PLAN, STAGES

    for stage in (PLAN, *STAGES.values()):
        for target in _target_names(stage):
            module, _, name = target.partition(":")
            assert module in MODULES, f"{stage.name}: {target} names no module of the package"
            defined = {n.name for n in ast.parse(MODULES[module].read_text()).body if hasattr(n, "name")}
            assert name in defined, f"{stage.name}: {target} names no function of {module}"


if __name__ == "__main__":
    print(layout_table())


TESTS = REPO / "tests"
SUITES = {"integration", "faults", "benchmarks"}  # the whole chain on real clusters, injected faults, benchmark scripts
REPOSITORY_CHECKS = {"test_architecture.py", "test_docs.py", "test_repository.py"}


def _stray_tests(tests: Path, package: Path) -> list[str]:
    """Test files under `tests` that mirror no module of `package`: tests/<pkg>/test_<module>.py must test
    <package>/<pkg>/<module>.py or its subpackage <module>/, tests/test_<module>.py a top-level module."""
    stray = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        if rel.parts[0] in SUITES or (len(rel.parts) == 1 and rel.name in REPOSITORY_CHECKS):
            continue
        target = package.joinpath(*rel.parts[:-1], rel.stem.removeprefix("test_"))
        if not (target.with_suffix(".py").exists() or (target / "__init__.py").exists()):
            stray.append(str(rel))
    return stray


def test_the_tests_mirror_the_package():
    assert not _stray_tests(TESTS, PACKAGE), _stray_tests(TESTS, PACKAGE)


def test_a_test_file_that_mirrors_no_module_is_found(tmp_path):
    (tmp_path / "pkg" / "infer").mkdir(parents=True)
    (tmp_path / "pkg" / "infer" / "stage.py").touch()
    (tmp_path / "tests" / "infer").mkdir(parents=True)
    for name in ("infer/test_stage.py", "infer/test_gone.py", "faults/test_chaos.py", "test_docs.py", "test_x.py"):
        (tmp_path / "tests" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "tests" / name).touch()
    assert _stray_tests(tmp_path / "tests", tmp_path / "pkg") == ["infer/test_gone.py", "test_x.py"]


def test_no_test_file_imports_another_test_file():
    """Shared code lives in tests/helpers.py (or a fixture in tests/conftest.py), never in a test file."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert not found, found
