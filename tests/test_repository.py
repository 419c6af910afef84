"""The repository is self-contained: tests and benchmarks read nothing outside it, and its test data say where they
come from (tests/fixtures/README.md: origin, licence and users of each fixture)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures"
SCANNED = ("tests", "benchmarks")
# text that reaches outside the repository: a sibling of it (REPO.parent, "../", a "shared" path component) or an
# absolute path of the machine it was written on
OUTSIDE = {
    "REPO.parent": re.compile(r"\bREPO\s*\.\s*parents?\b"),
    "a parent folder '..'": re.compile(r"\.\./|\.\.\\|[\"']\.\.[\"']"),
    "a 'shared' path component": re.compile(r"[\"']shared[\"']|[\"'/]shared/|/shared\b"),
    "an absolute /work path": re.compile(r"(?<![\w.-])/work\b"),
}


def python_files() -> list[Path]:
    """Every .py file under tests/ and benchmarks/ except this one (which spells the patterns out)."""
    files = sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py"))
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def outside_references(path: Path, repo: Path = REPO) -> list[str]:
    """'file:line: what' for each line of `path` (a file under `repo`) that points outside the repository."""
    rel = path.relative_to(repo)
    top = len(rel.parts) - 1  # Path(__file__).parents[top] is the repository; parents[top + 1] is outside
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{rel}:{number}"
        found += [f"{where}: {what}" for what, pattern in OUTSIDE.items() if pattern.search(line)]
        if "__file__" in line:
            up = [int(n) for n in re.findall(r"\.parents\[\s*(\d+)\s*\]", line)]
            up += [chain.count(".parent") - 1 for chain in re.findall(r"(?:\.parent\b)+", line)]
            if any(n > top for n in up):
                found.append(f"{where}: a parent of __file__ above the repository")
    return found


def test_the_scan_finds_paths_outside_the_repository(tmp_path):
    """The checks below can fail: each way out of the repository is caught, a path inside it is not."""
    outside = [
        'SHARED = REPO.parent / "shared"',
        'COUNTRIES = REPO.parents[0] / "countries"',
        'path = "../shared/fixtures/countries/LTU.geojson"',
        'path = Path("..") / "x"',
        'FIXTURES = Path("/work/shared/fixtures")',
        "ROOT = Path(__file__).resolve().parents[2]",
        "ROOT = Path(__file__).parent.parent.parent",
    ]
    inside = [
        'DATA = REPO / "tests" / "fixtures"',
        "REPO = Path(__file__).resolve().parents[1]",
        "ROOT = Path(__file__).parent.parent",
        '"machine": f"{platform.node()} (shared; load average 1.0)"',
        'log = Path(profile).parent / "x.log"',
    ]
    tests = tmp_path / "tests"
    tests.mkdir()
    for lines, expected in ((outside, True), (inside, False)):
        for line in lines:
            path = tests / "probe.py"
            path.write_text(line + "\n")
            found = outside_references(path, tmp_path)
            assert bool(found) == expected, (line, found)


def test_tests_and_benchmarks_read_nothing_outside_the_repository():
    files = python_files()
    assert any(p.name == "conftest.py" for p in files) and any(p.parent.name == "benchmarks" for p in files)
    found = [ref for path in files for ref in outside_references(path)]
    assert not found, "paths outside the repository (put the data under tests/fixtures):\n" + "\n".join(found)


def readme_sections() -> dict[str, str]:
    """{fixture folder name: its section} of tests/fixtures/README.md (sections headed '## `name/`: ...')."""
    text = (DATA / "README.md").read_text()
    parts = re.split(r"^## `([^`/]+)/`.*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_fixture_folder_is_documented_with_origin_licence_and_users():
    folders = sorted(p.name for p in DATA.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders, f"no fixture folders in {DATA}"
    sections = readme_sections()
    assert not set(folders) - set(sections), (
        f"folders missing from tests/fixtures/README.md: {set(folders) - set(sections)}"
    )
    assert not set(sections) - set(folders), f"README sections without a folder: {set(sections) - set(folders)}"
    for name, section in sections.items():
        for field in ("Origin:", "Licence:", "Used by:"):
            assert field in section, f"tests/fixtures/README.md, {name}/: no '{field}' line"
        for licence in (DATA / name).glob("LICENSE*"):
            assert licence.name in section, f"tests/fixtures/README.md, {name}/: {licence.name} not referred to"


def test_test_data_is_not_ignored_by_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(REPO)) for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout == "", f".gitignore drops test data (add '!tests/fixtures/**'):\n{ignored.stdout}"
