"""docs/security.md names, for each threat, the tests that prove its defence: every test it
names must exist where it says (a moved or renamed test would leave the table lying)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `unit/test_x.py::test_y`, or `::test_z` for another test of the file named just before
_REFERENCE = re.compile(r"`((?:unit|e2e)/[A-Za-z0-9_/]+\.py)?(?:::([A-Za-z0-9_]+))?`")


def references(text: str) -> list[tuple[str, str | None]]:
    found = []
    for line in text.splitlines():
        current = None
        for match in _REFERENCE.finditer(line):
            path, test = match.groups()
            current = path or current
            if current and (path or test):
                found.append((current, test))
    return found


def test_every_test_the_security_table_names_exists():
    named = references((ROOT / "docs" / "security.md").read_text(encoding="utf-8"))
    assert len(named) > 50
    missing = []
    for path, test in named:
        source = ROOT / "tests" / path
        if not source.is_file():
            missing.append(path)
        elif test and not re.search(rf"^(?:async )?def {test}\b", source.read_text(), re.M):
            missing.append(f"{path}::{test}")
    assert missing == []


def test_the_reference_reader_follows_the_shorthand():
    assert references("`unit/a.py::t1`, `::t2` and `e2e/b.py`") == [
        ("unit/a.py", "t1"), ("unit/a.py", "t2"), ("e2e/b.py", None)]
