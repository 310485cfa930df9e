"""Golden files, as Postfix's cleanup tests keep them: the output of a stage for a fixed input,
committed as tests/corpus/golden/NAME.ref.eml and compared byte for byte; on a mismatch the test
fails with a unified diff. `pytest --update-golden` (or UPDATE_GOLDEN=1) writes the files from the
current code instead; review that diff before committing it (tests/corpus/golden/README.md)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "corpus" / "golden"


def shown_lines(data: bytes) -> list[str]:
    """The CRLF lines of a message as text a terminal can show: UTF-8 where it is, escapes for
    other bytes and for control characters (ISO-2022-JP's ESC), bare CR and LF made visible."""
    lines = []
    for line in data.split(b"\r\n"):
        text = line.decode("utf-8", "backslashreplace")
        text = "".join(c if c >= " " or c == "\t" else f"\\x{ord(c):02x}" for c in text)
        lines.append(text)
    return lines


def golden_diff(expected: bytes, actual: bytes, name: str) -> str:
    return "\n".join(difflib.unified_diff(
        shown_lines(expected), shown_lines(actual), f"{name} (committed)", f"{name} (now)",
        lineterm="", n=2,
    ))


def matches_golden(actual: bytes, reference: Path, update: bool) -> None:
    """Compare `actual` with the committed reference file, or write it when updating."""
    if update:
        reference.write_bytes(actual)
        return
    if not reference.exists():
        pytest.fail(f"{reference.name} is missing: run pytest --update-golden (or UPDATE_GOLDEN=1), "
                    f"then review and commit it", pytrace=False)
    expected = reference.read_bytes()
    if actual != expected:
        pytest.fail(f"{reference.name} differs from what the code makes now "
                    f"(if the change is intended: pytest --update-golden, review, commit):\n"
                    + golden_diff(expected, actual, reference.name), pytrace=False)
