"""What the whole test tree shares.

* Marking by directory: every test under tests/e2e/ is marked `e2e` (it opens a socket or starts a
  process), so `pytest -m "not e2e"` (`make test-fast`) runs exactly tests/unit/. A module never
  marks itself; tests/unit/test_test_tree.py keeps the unit tree free of sockets and processes.
* `--update-golden` (or UPDATE_GOLDEN=1): golden-file tests write their reference files instead of
  comparing with them (tests/corpus/golden/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite tests/corpus/golden/*.ref.eml from the current code instead of comparing "
             "(same as UPDATE_GOLDEN=1); review the diff before committing",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def update_golden(pytestconfig: pytest.Config) -> bool:
    """True when golden files are to be rewritten rather than compared."""
    return bool(pytestconfig.getoption("--update-golden")) or os.environ.get("UPDATE_GOLDEN") == "1"
