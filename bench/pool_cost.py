"""CPU per delivery through SmtpNextHop for pool sizes side by side: WAVES waves of CONCURRENCY
deliveries at once of a 2 KB mail to Postfix's smtp-sink (C, its own process, so only the
client's cost is counted). A pool smaller than the deliveries at once makes each surplus
delivery connect, greet and QUIT again.

    .venv/bin/python bench/pool_cost.py [--pools 4,20] [--concurrency 10] [--waves 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.eventloop import new_event_loop  # noqa: E402
from gateway.model import OutgoingMessage  # noqa: E402
from gateway.outbound.smtp import SmtpNextHop  # noqa: E402

MAIL = b"Subject: bench\r\nFrom: a@city.example.lg.jp\r\n\r\n" + b"Thank you for your mail.\r\n" * 70


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def cpu_per_delivery(port: int, pool: int, concurrency: int, waves: int) -> float:
    hop = SmtpNextHop("127.0.0.1", port, starttls="off", timeout=10,
                      helo_name="gateway.city.example.lg.jp", pool_size=pool)
    message = OutgoingMessage("a@city.example.lg.jp", ("b@partner.example.com",), MAIL,
                              crlf_only=True)
    started = time.process_time()
    for _ in range(waves):
        results = await asyncio.gather(*(hop.deliver(message) for _ in range(concurrency)))
        if not all(result.code == 250 for result in results):
            raise SystemExit(f"the sink refused: {results[0]}")
    spent = time.process_time() - started
    await hop.close()
    return spent * 1000 / (waves * concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="4,20")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--waves", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", *user, "-c", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        pools = [int(value) for value in args.pools.split(",")]
        figures: dict[int, list[float]] = {pool: [] for pool in pools}
        for round_number in range(args.rounds):  # alternating order, as the other benches
            for pool in pools if round_number % 2 == 0 else reversed(pools):
                with asyncio.Runner(loop_factory=new_event_loop) as runner:
                    figures[pool].append(runner.run(cpu_per_delivery(
                        port, pool, args.concurrency, args.waves)))
        print(f"{args.concurrency} deliveries at once, {args.waves} waves, "
              f"median of {args.rounds} rounds:")
        for pool, values in figures.items():
            print(f"  pool_size {pool:3}: {sorted(values)[len(values) // 2]:.3f} ms CPU per delivery")
    finally:
        sink.terminate()
        sink.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
