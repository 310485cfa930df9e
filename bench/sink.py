"""A discarding SMTP sink for the relay benchmark: aiosmtpd in its own process, counting what arrives.

It listens on loopback, prints `READY <port>` once it accepts connections, answers every message
with 250 and forgets its content (no disk writes). On SIGTERM or SIGINT it closes its sessions and
prints one JSON line — messages, bytes, recipients, connections — so the benchmark can check that
every message arrived.

    python bench/sink.py [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import asdict, dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class SinkCounts:
    messages: int = 0
    bytes: int = 0
    recipients: int = 0
    connections: int = 0


class DiscardingHandler:
    """Accept everything; keep only counts."""

    def __init__(self, counts: SinkCounts) -> None:
        self._counts = counts

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._counts.messages += 1
        self._counts.bytes += len(envelope.original_content or b"")
        self._counts.recipients += len(envelope.rcpt_tos)
        return "250 2.0.0 discarded"


class SinkSMTP(SMTP):
    """aiosmtpd's protocol accepting lines far over RFC 5321's 1000 octets, like a real MTA."""

    line_length_limit = 1 << 20

    def __init__(self, *args, sessions: set[SinkSMTP], counts: SinkCounts, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions
        self._counts = counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sessions.add(self)
        self._counts.connections += 1

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._sessions.discard(self)


async def serve(port: int) -> SinkCounts:
    loop = asyncio.get_running_loop()
    counts = SinkCounts()
    sessions: set[SinkSMTP] = set()
    handler = DiscardingHandler(counts)

    def factory() -> SinkSMTP:
        return SinkSMTP(
            handler, sessions=sessions, counts=counts, hostname="sink.bench",  # no getfqdn() lookup
            decode_data=False, enable_SMTPUTF8=True, data_size_limit=None, loop=loop,
        )

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(factory, host="127.0.0.1", port=port)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    for session in list(sessions):
        if session.transport is not None:
            session.transport.close()
    await asyncio.sleep(0.1)  # let connection_lost run for the sessions just closed
    await server.wait_closed()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    args = parser.parse_args(argv)
    counts = asyncio.run(serve(args.port))
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
