"""Unlock benchmark: how long the password mail of a PPAP pair takes, and what a mail that is
not a password mail costs.

A real gateway (in this process, its own event-loop thread), a real sink and a real clamd with
the EICAR-only database from the tests. For a 20 MB AES-256 ZIP and a 20 MB ZipCrypto ZIP:
  gateway    the password mail sent over SMTP → 250: candidates found, the blob read back from
             encrypted storage, the ZIP decrypted and verified, every file scanned and stored
  reference  the same archive opened by pyzipper (read every member) + the same files sent to
             clamd INSTREAM: the work any unlock must do, with no gateway around it
and the gateway/reference ratio (the figure that survives a shared machine). Then the cost of a
mail with no attachment from a sender with nothing pending, and from a sender whose 20 MB ZIP is
pending but whose mail holds no matching password, beside the SMTP round trip of the same mail.

    .venv/bin/python bench/unlock_time.py [--size-mb 20] [--rounds 3] [--write-docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

import pyzipper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay_throughput import write_docs  # noqa: E402  (run from bench/, like the others)

from gateway.model import Envelope  # noqa: E402
from gateway.pipeline.classify import classify  # noqa: E402
from gateway.pipeline.policy import decide  # noqa: E402
from gateway.pipeline.unlock_step import PasswordMailUnlocker  # noqa: E402
from gateway.sample import build_encrypted_zip  # noqa: E402
from gateway.scan.clamd import ClamdScanner  # noqa: E402
from tests.support.clamav import ClamdProcess  # noqa: E402
from tests.support.ppap import SENDER, password_mail, zip_mail, zipcrypto_zip  # noqa: E402
from tests.support.running import RunningGateway, make_config, send  # noqa: E402
from tests.support.sink import RecordingSink  # noqa: E402

RCPT = "tanaka@partner.example.com"
DOCS_BEGIN, DOCS_END = "<!-- unlock_time:begin -->", "<!-- unlock_time:end -->"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Archive:
    kind: str
    data: bytes
    password: str
    members: dict[str, bytes]


def archives(size: int) -> list[Archive]:
    # Random bytes do not compress: the ZIP is as big as what it holds, the worst case to decrypt.
    members = {"見積書.pdf": os.urandom(size // 2), "明細/内訳.xlsx": os.urandom(size - size // 2)}
    return [
        Archive("AES-256", build_encrypted_zip(members, "Qm7#vK2p9L"), "Qm7#vK2p9L", members),
        Archive("ZipCrypto", zipcrypto_zip(members, "h4Tn9xWe"), "h4Tn9xWe", members),
    ]


def reference_seconds(archive: Archive, scanner: ClamdScanner) -> float:
    started = time.perf_counter()
    with pyzipper.AESZipFile(io.BytesIO(archive.data)) as opened:
        opened.setpassword(archive.password.encode())
        plain = [opened.read(info) for info in opened.infolist()]
    for data in plain:
        asyncio.run(scanner.scan(data))
    return time.perf_counter() - started


def gateway_seconds(workdir: Path, clamd: ClamdProcess, archive: Archive, round_: int) -> float:
    with RecordingSink() as sink:
        config = make_config(workdir / f"{archive.kind}-{round_}", f"smtp://127.0.0.1:{sink.port}",
                             {"scan": {"clamd": clamd.address},
                              "policy": {"sender_receipt": False}})
        with RunningGateway(config) as running:
            assert send(running.port, SENDER, [RCPT], zip_mail([RCPT], archive.data))[0] == 250
            sink.wait_for(1, timeout=120)
            running.clock.advance(minutes=1)
            started = time.perf_counter()
            code, text = send(running.port, SENDER, [RCPT], password_mail([RCPT], archive.password))
            seconds = time.perf_counter() - started
            unlocked = "unlock.unlocked" in [e.kind for e in running.db.events()]
            if code != 250 or not unlocked:
                raise SystemExit(f"{archive.kind}: password mail answered {code} {text}, "
                                 f"unlocked={unlocked}")
    return seconds


def candidate_costs(workdir: Path, archive: Archive, calls: int) -> dict[str, float]:
    """Seconds per call of the unlocker alone for a mail that opens nothing, and the SMTP round
    trip of that mail through the whole gateway."""
    with RecordingSink() as sink:
        config = make_config(workdir / "candidates", f"smtp://127.0.0.1:{sink.port}",
                             {"policy": {"sender_receipt": False}})
        with RunningGateway(config) as running:
            assert send(running.port, SENDER, [RCPT], zip_mail([RCPT], archive.data))[0] == 250
            sink.wait_for(1, timeout=120)
            running.clock.advance(minutes=1)
            unlocker = PasswordMailUnlocker(running.db, running.gateway._opener, running.clock)
            raw = password_mail([RCPT], "not-the-password")
            message = message_from_bytes(raw)
            classification = classify(message)
            results = {}
            for label, sender in (("nothing pending", "other@city.example.lg.jp"),
                                  (f"{len(archive.data) // MiB} MB ZIP pending, no match", SENDER)):
                envelope = Envelope(sender, (RCPT,), "127.0.0.1", "bench")
                policy = decide(config, envelope, classification).policy
                started = time.perf_counter()
                for _ in range(calls):
                    assert running.call(unlocker.handle(envelope, message, classification,
                                                        policy)) is None
                results[label] = (time.perf_counter() - started) / calls
            started = time.perf_counter()
            for _ in range(calls):
                assert send(running.port, "other@city.example.lg.jp", [RCPT], raw)[0] == 250
            results["SMTP round trip of that mail"] = (time.perf_counter() - started) / calls
    return results


def report(size_mb: int, rows: list[tuple[str, float, float]], costs: dict[str, float],
           rounds: int, clamd_version: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {now}, nproc {os.cpu_count()}, Python {sys.version.split()[0]}, {clamd_version}.",
        "",
        f"Command: `.venv/bin/python bench/unlock_time.py --size-mb {size_mb} --rounds {rounds}`"
        f" (median of {rounds} rounds).",
        "",
        "| archive | gateway: password mail → 250 (s) | reference: pyzipper + clamd (s) |"
        " gateway / reference |",
        "|---|--:|--:|--:|",
    ]
    lines += [f"| {size_mb} MB {kind} | {g:.2f} | {r:.2f} | {g / r:.2f} |" for kind, g, r in rows]
    lines += ["", "| mail with no matching password | ms per mail |", "|---|--:|"]
    lines += [f"| {label} | {seconds * 1000:.2f} |" for label, seconds in costs.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--write-docs", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="unlock-bench-") as temp, \
            ClamdProcess(Path(temp), stream_max_length=64 * MiB) as clamd:
        workdir = Path(temp)
        scanner = ClamdScanner(clamd.address, timeout=60)
        clamd_version = asyncio.run(scanner.version())
        made = archives(args.size_mb * MiB)
        for archive in made:
            gateway = [gateway_seconds(workdir, clamd, archive, n) for n in range(args.rounds)]
            reference = [reference_seconds(archive, scanner) for _ in range(args.rounds)]
            rows.append((archive.kind, statistics.median(gateway), statistics.median(reference)))
            print(f"{archive.kind}: gateway {rows[-1][1]:.2f}s reference {rows[-1][2]:.2f}s",
                  flush=True)
        costs = candidate_costs(workdir, made[0], args.calls)
    block = report(args.size_mb, rows, costs, args.rounds, clamd_version.split("/")[0])
    print(block)
    if args.write_docs:
        write_docs(args.write_docs, block, (DOCS_BEGIN, DOCS_END))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
