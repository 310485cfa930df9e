"""Command line for the fuzzer (`make fuzz`): run a campaign, print the summary, exit 1 on violations.

    python -m tests.fuzz --seconds 1200 --seed 42 --out test-artifacts/fuzz
    python -m tests.fuzz --seed 42 --replay 17 --out /tmp/replay    # message 17 of seed 42 again
    python -m tests.fuzz --seconds 1200 --seed 42 --write-docs docs/security.md   # record the figures
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.fuzz.runner import MESSAGE_TIMEOUT, format_summary, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1200, help="wall-time budget (default 1200)")
    parser.add_argument("--seed", type=int, required=True, help="message i is rebuilt from (seed, i)")
    parser.add_argument("--out", type=Path, default=Path("test-artifacts/fuzz"),
                        help="summary.json and the reproducers go here")
    parser.add_argument("--max-messages", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=MESSAGE_TIMEOUT, help="per message, seconds")
    parser.add_argument("--replay", type=int, default=None, metavar="INDEX",
                        help="send only message INDEX of this seed")
    parser.add_argument("--write-docs", type=Path, default=None, metavar="MARKDOWN",
                        help="put the figures between the fuzz markers of this file")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("7zz", "bsdtar") if shutil.which(tool) is None]
    if missing:
        print(f"{', '.join(missing)} missing: `make system-deps` installs them", file=sys.stderr)
        return 2
    summary = run(args.seed, args.seconds, args.out, args.max_messages, args.timeout, args.replay)
    print(format_summary(summary))
    if args.write_docs is not None:
        write_docs(args.write_docs, summary)
    return 1 if summary["violations"] else 0


def write_docs(path: Path, summary: dict) -> None:
    """The campaign's figures as a short table between `<!-- fuzz:begin -->` and `:end -->`."""
    codes = ", ".join(f"{code} ×{count}" for code, count in sorted(summary["replies_by_code"].items()))
    opened = ", ".join(f"{tool} {count}" for tool, count in summary["external_copies_examined_by"].items())
    violations = summary["violations_by_property"] or {"none": 0}
    table = "\n".join([
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'} "
        f"(Python {platform.python_version()}): `python -m tests.fuzz --seconds "
        f"{summary['seconds_budget']:g} --seed {summary['seed']}`",
        "",
        "| figure | value |",
        "|---|---|",
        f"| messages | {summary['messages']} in {summary['elapsed']:g} s "
        f"({summary['msgs_per_second']:g} msgs/s) |",
        f"| replies | {codes} |",
        f"| copies received by the sink | {summary['copies'].get('received', 0)}, of which "
        f"{summary['copies'].get('external', 0)} for recipients outside |",
        f"| external copies in which a reader opened an archive | {opened} |",
        f"| violations | {', '.join(f'{k} {v}' for k, v in violations.items())} |",
        f"| oracle errors | {summary['oracle_errors']} |",
    ])
    text = path.read_text(encoding="utf-8")
    block = f"<!-- fuzz:begin -->\n{table}\n<!-- fuzz:end -->"
    path.write_text(re.sub(r"<!-- fuzz:begin -->.*?<!-- fuzz:end -->", lambda _: block, text,
                           flags=re.S), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
