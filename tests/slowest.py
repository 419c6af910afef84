"""The slowest tests of a `make test` run, from its JUnit XML: `python tests/slowest.py [N] [test-report.xml]`."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def slowest(report: Path, n: int = 10) -> list[tuple[float, str]]:
    """The `n` longest (seconds, test id) of the report, longest first."""
    cases = ET.parse(report).getroot().iter("testcase")
    timed = [(float(c.get("time", 0)), f"{c.get('classname')}::{c.get('name')}") for c in cases]
    return sorted(timed, reverse=True)[:n]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    path = Path(sys.argv[2] if len(sys.argv) > 2 else "test-report.xml")
    total = sum(float(c.get("time", 0)) for c in ET.parse(path).getroot().iter("testcase"))
    for seconds, name in slowest(path, count):
        print(f"| {seconds:7.1f} s | `{name}` |")
    print(f"all tests: {total / 60:.1f} min")
