"""Every benchmarks/results/*.json records the commit it measured and whether the tree was dirty: the scripts write
both through benchmarks/provenance.py, and a result measured before it says in a "provenance" note what is known."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))
HASH = re.compile(r"[0-9a-f]{7,40}")


def _benchmarks_module(name: str):
    """benchmarks/`name`.py as the scripts see it (they run with benchmarks/ first on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def problems(name: str, record: object) -> list[str]:
    """What is wrong with one results file's provenance (none when it is right), the commit's existence aside."""
    if not isinstance(record, dict):
        return [f"{name}: a {type(record).__name__}, not an object (write lists as {{'rows': [...], ...}})"]
    missing = [k for k in ("commit", "dirty") if k not in record]
    if missing:
        return [f"{name}: no {' or '.join(missing)} (merge benchmarks/provenance.py's provenance() into it)"]
    found = []
    commit, dirty, note = record["commit"], record["dirty"], record.get("provenance")
    if commit is not None and not (isinstance(commit, str) and HASH.fullmatch(commit)):
        found.append(f"{name}: commit {commit!r} is not a hex hash of 7 to 40 characters")
    unknown = dirty is None or commit is None
    if not isinstance(dirty, bool) and dirty is not None:
        found.append(f"{name}: dirty {dirty!r} is neither a bool nor null")
    if unknown and not (isinstance(note, str) and note.strip()):
        found.append(f"{name}: a null commit or dirty needs a 'provenance' note saying what is known")
    return found


def test_the_check_sees_a_list_a_missing_key_a_bad_hash_and_an_unexplained_null():
    assert problems("ok.json", {"commit": "0123abc", "dirty": False}) == []
    assert problems("ok.json", {"commit": None, "dirty": None, "provenance": "measured before ..."}) == []
    assert problems("list.json", [{"x": 1}])
    assert problems("no_dirty.json", {"commit": "0123abc"})
    assert problems("suffix.json", {"commit": "0123abc+dirty", "dirty": True})
    assert problems("short.json", {"commit": "0123ab", "dirty": True})
    assert problems("string.json", {"commit": "0123abc", "dirty": "yes"})
    assert problems("unexplained.json", {"commit": "0123abc", "dirty": None})
    assert problems("empty_note.json", {"commit": None, "dirty": None, "provenance": " "})


def test_every_result_records_its_commit_and_dirty_state():
    assert RESULTS, "no benchmarks/results/*.json found"
    found = [p for path in RESULTS for p in problems(path.name, json.loads(path.read_text()))]
    assert not found, "\n".join(found)


def test_every_recorded_commit_is_in_this_repositorys_history():
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone lacks the history the results were measured at")
    records = {path.name: json.loads(path.read_text()) for path in RESULTS}
    commits = {name: r["commit"] for name, r in records.items() if isinstance(r, dict) and r.get("commit")}
    missing = [f"{name}: {c}" for name, c in commits.items() if _git("cat-file", "-e", f"{c}^{{commit}}").returncode]
    assert not missing, "commits not in this repository's history (made on an unmerged branch?):\n" + "\n".join(missing)


def test_provenance_records_head_a_bool_the_machine_and_the_time():
    record = _benchmarks_module("provenance").provenance()
    assert record["commit"] == _git("rev-parse", "HEAD").stdout.strip()
    assert isinstance(record["dirty"], bool)
    assert set(record["machine"]) == {"cpu", "cpus", "platform", "python", "torch"}
    assert record["machine"]["cpu"] and record["machine"]["cpus"] >= 1
    measured_at = dt.datetime.fromisoformat(record["measured_at"])
    assert measured_at.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - measured_at) < dt.timedelta(minutes=5)
    assert problems("provenance()", record) == []


def test_common_provenance_is_the_parts_own_only_where_they_all_agree():
    common = _benchmarks_module("provenance").common
    a, b = {"commit": "0123abc", "dirty": False}, {"commit": "4567def", "dirty": False}
    assert common([a, {**a, "x": 1}]) == {"commit": "0123abc", "dirty": False}
    for parts in ([a, b], [a, {**a, "dirty": True}], [a, {"x": 1}]):
        record = common(parts)
        assert record["commit"] is None and record["dirty"] is None and problems("common", record) == []


def test_provenance_py_is_the_only_benchmark_code_that_asks_git_for_the_commit():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    own = [p.name for p in scripts if p.name != "provenance.py" and "rev-parse" in p.read_text()]
    assert not own, f"these call git rev-parse themselves; use benchmarks/provenance.py's provenance(): {own}"
    writers = [p for p in scripts if p.name != "provenance.py" and '"results"' in p.read_text()]
    assert writers, "no benchmark names benchmarks/results"
    imports = re.compile(r"^from provenance import .*\bprovenance\b", re.M)
    unstamped = [p.name for p in writers if not imports.search(p.read_text())]
    assert not unstamped, f"these write benchmarks/results without provenance(): {unstamped}"
