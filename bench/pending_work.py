"""Pending-work benchmark: does a plain mail cost more when its sender has many transfers still
waiting for a password (issue 14 point 2)?

For each level of pending work (default 0 and 10,000 transfers of the same sender, each with an
active link to someone else, none unlocked), it fills the store of a fresh `ppap-gateway serve`,
starts it, sends --messages plain 2 KB mails from that sender over one SMTP connection, and reads
the CPU time `serve` spent (utime + stime from /proc) while they went through. It prints CPU ms per
message for each level and the ratio of the rates (pending / none): the target is >= 0.9. Both
levels run in the same invocation, alternating, so a noisy machine affects both.

    .venv/bin/python bench/pending_work.py [--messages 300] [--pending 10000] [--rounds 3]
        [--write-docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay_throughput import machine_line, write_docs  # noqa: E402
from gateway.store.db import Database  # noqa: E402
from gateway.store.passwords import hash_token  # noqa: E402
from tests.support.processes import free_port, wait_listening  # noqa: E402
from tests.support.raw_sink import RawSink  # noqa: E402

SENDER = "somu@city.example.lg.jp"
RECIPIENT = "tanaka@partner.example.com"
DOCS_MARKERS = ("<!-- bench:pending-work:begin -->", "<!-- bench:pending-work:end -->")
TICKS = os.sysconf("SC_CLK_TCK")


def plain_mail(index: int) -> bytes:
    body = (b"Thank you for your mail. " * 3 + b"\r\n") * 24  # ~2 KB
    return (b"From: <%s>\r\nTo: <%s>\r\nSubject: plain %d\r\nMessage-ID: <plain-%d@bench>\r\n\r\n"
            % (SENDER.encode(), RECIPIENT.encode(), index, index) + body)


def write_config(work: Path, port: int, sink_port: int) -> Path:
    config = work / "gateway.toml"
    config.write_text(f"""
[gateway]
hostname = "gw.bench"
internal_domains = ["city.example.lg.jp"]

[smtp]
listen = "127.0.0.1:{port}"

[next_hop]
url = "smtp://127.0.0.1:{sink_port}"
starttls = "off"

[storage]
data_dir = "{work / 'data'}"

[portal]
public_url = "https://files.city.example.lg.jp"
listen = "127.0.0.1:{free_port()}"

[admin]
listen = "127.0.0.1:{free_port()}"
""", encoding="utf-8")
    return config


def fill(database: Path, pending: int) -> None:
    """`pending` active, still locked transfers of SENDER, each linked to another recipient."""
    now = datetime.now(UTC)
    db = Database(database)
    try:
        with db.transaction():
            for n in range(pending):
                tid = f"pending-{n}"
                db.insert_transfer(
                    id=tid, fingerprint=f"fp-{n}", message_id=f"<p{n}@bench>", sender=SENDER,
                    department="somu", subject="見積書", created_at=now - timedelta(minutes=n % 600),
                    expires_at=now + timedelta(days=7), password_channel="none", locale="ja",
                    state="active",
                )
                db.insert_link(id=f"link-{n}", transfer_id=tid, recipient=f"p{n}@partner.example.com",
                               token_hash=hash_token(f"bench-token-{n}"), created_at=now,
                               state="active", activated_at=now)
    finally:
        db.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_level(pending: int, messages: int) -> float:
    """CPU ms of `serve` per plain mail with `pending` transfers waiting."""
    with tempfile.TemporaryDirectory(prefix="pending-") as tmp, RawSink(keep_head=0) as sink:
        work = Path(tmp)
        port = free_port()
        config = write_config(work, port, sink.port)
        command = [str(Path(sys.executable).parent / "ppap-gateway"), "serve", "--config", str(config)]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port, first)  # creates the store and runs the migrations
        first.terminate()
        first.wait(timeout=30)
        fill(work / "data" / "gateway.sqlite3", pending)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, process)
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail(SENDER, [RECIPIENT], plain_mail(-1))  # warm up
                before = cpu_seconds(process.pid)
                for index in range(messages):
                    client.sendmail(SENDER, [RECIPIENT], plain_mail(index))
                spent = cpu_seconds(process.pid) - before
        finally:
            process.terminate()
            process.wait(timeout=30)
    return spent * 1000 / messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-docs", type=Path)
    args = parser.parse_args(argv)
    levels = (0, args.pending)
    results: dict[int, list[float]] = {level: [] for level in levels}
    for round_ in range(args.rounds):
        for level in levels if round_ % 2 == 0 else reversed(levels):
            results[level].append(run_level(level, args.messages))
            print(f"round {round_ + 1}: {level} pending: {results[level][-1]:.2f} ms CPU per mail",
                  flush=True)
    none, many = (statistics.median(results[level]) for level in levels)
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: {machine_line(Path(tempfile.gettempdir()))}.",
        "",
        f"Command: `.venv/bin/python bench/pending_work.py --messages {args.messages} "
        f"--pending {args.pending} --rounds {args.rounds}`  ",
        f"{args.messages} plain 2 KB mails per level over one connection, medians of {args.rounds} "
        "rounds, `serve`'s CPU (utime + stime).",
        "",
        "| transfers of the sender pending | CPU ms per plain mail |",
        "|---|---|",
        f"| 0 | {none:.2f} |",
        f"| {args.pending:,} | {many:.2f} |",
        "",
        f"Rate with {args.pending:,} pending / rate with none: **{none / many:.2f}** (target ≥ 0.9).",
    ]
    block = "\n".join(lines)
    print(block)
    if args.write_docs:
        write_docs(args.write_docs, block, DOCS_MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
