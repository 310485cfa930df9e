"""Command line for the fuzzer (`make fuzz`): run a campaign, print the summary, exit 1 on violations.

    python -m tests.fuzz --seconds 1200 --seed 42 --out test-artifacts/fuzz
    python -m tests.fuzz --seed 42 --replay 17 --out /tmp/replay    # message 17 of seed 42 again
"""

from __future__ import annotations

import argparse
import shutil
import sys
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
    args = parser.parse_args(argv)
    missing = [tool for tool in ("7zz", "bsdtar") if shutil.which(tool) is None]
    if missing:
        print(f"{', '.join(missing)} missing: `make system-deps` installs them", file=sys.stderr)
        return 2
    summary = run(args.seed, args.seconds, args.out, args.max_messages, args.timeout, args.replay)
    print(format_summary(summary))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
