"""A fixed-seed fuzz campaign against one real gateway and a real sink (tests/fuzz): no copy for an
external recipient may carry an encrypted archive, no traceback, no unexplained 4xx or bare 5xx,
no hang. Reproducers of any violation are written to test-artifacts/fuzz-ci/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.fuzz.runner import TOOLS, format_summary, run

FUZZ_SEED = 20261126
FUZZ_SECONDS = 90  # wall-time budget of this test's campaign
MIN_MESSAGES = 200  # ~13 msgs/s on two shared cores; far fewer means the fuzzer is not fuzzing
OUT = Path(__file__).resolve().parents[2] / "test-artifacts" / "fuzz-ci"


def test_fixed_seed_fuzz_campaign_finds_no_violation():
    missing = [tool for tool in ("7zz", "bsdtar") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: `make system-deps` installs them "
                    "(Debian packages 7zip and libarchive-tools); the oracle needs both")
    summary = run(FUZZ_SEED, FUZZ_SECONDS, OUT, echo=lambda line: None)
    print(format_summary(summary))

    # A fuzzer that tests nothing must fail.
    assert summary["messages"] >= MIN_MESSAGES, summary["messages"]
    assert summary["replies_by_class"].get("2xx", 0) > 0, summary["replies_by_class"]
    assert summary["replies_by_class"].get("5xx", 0) > 0, summary["replies_by_class"]
    for tool in TOOLS:
        assert summary["external_copies_examined_by"][tool] >= 1, (tool, summary["external_copies_examined_by"])

    if summary["violations"]:
        first = "\n".join(
            f"- #{r['index']} {r['property']} via {' + '.join(r['mutators']) or '(none)'} "
            f"on {r['seed_message']}: {r['eml']}\n  {r['explanation'][:400]}"
            for r in summary["reproducers"][:8])
        kinds = "\n".join(f"- {count}x {kind}" for kind, count in summary["violations_by_kind"].items())
        pytest.fail(f"{summary['violations']} violation(s) {json.dumps(summary['violations_by_property'])}; "
                    f"reproducers in {OUT}/ (replay one with the command in its .json)\nkinds:\n{kinds}\n"
                    f"first:\n{first}", pytrace=False)
