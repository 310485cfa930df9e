"""CPU per 2 MB PPAP mail through the Relay in-process: no SMTP on either side (a recording next
hop that accepts every copy), so what the pipeline costs without the
two SMTP legs; with --profile KEY, a cProfile of a second batch sorted by KEY (tottime, cumtime).

    .venv/bin/python bench/relay_cpu.py [--mails 10] [--profile tottime]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_mails import ppap_mail  # noqa: E402  (bench/ is sys.path[0])

from gateway.app import open_store  # noqa: E402
from gateway.config import build_config  # noqa: E402
from gateway.model import Envelope  # noqa: E402
from gateway.outbound.dkim import DkimSigner  # noqa: E402
from gateway.pipeline.notice import make_template_env  # noqa: E402
from gateway.pipeline.notify_step import NoticeQueue  # noqa: E402
from gateway.pipeline.relay import Relay  # noqa: E402
from gateway.pipeline.store_step import TransferWriter  # noqa: E402
from tests.support.accepting_hop import AcceptingNextHop  # noqa: E402

SENDER = "hoken@city.example.lg.jp"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=10)
    parser.add_argument("--profile", metavar="KEY")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="relay-cpu-"))
    config = build_config({"gateway": {"internal_domains": ["city.example.lg.jp"]},
                           "storage": {"data_dir": str(data)},
                           "portal": {"public_url": "https://files.city.example.lg.jp"}},
                          environ={})
    key = secrets.token_bytes(32)
    db, blobs = open_store(config, key)
    hop = AcceptingNextHop(keep=False)
    relay = Relay(config, db, TransferWriter(db, blobs, key, config.storage.chunk_size), hop,
                  DkimSigner([]), make_template_env(config.gateway.templates_dir),
                  lambda: datetime.datetime.now(datetime.UTC), NoticeQueue(db, key))
    mail = ppap_mail(SENDER)
    mail = mail if b"\r\n" in mail else mail.replace(b"\n", b"\r\n")
    mails = [f"X-N: {n}\r\n".encode() + mail for n in range(2 * args.mails)]
    envelope = Envelope(SENDER, ("tanaka@partner.example.com",))

    async def relay_all(batch: list[bytes]) -> None:
        for raw in batch:
            outcome = await relay.handle(envelope, raw)
            assert outcome.reply.code == 250, outcome

    started = time.process_time()
    asyncio.run(relay_all(mails[:args.mails]))
    per_mail = (time.process_time() - started) * 1000 / args.mails
    print(f"{per_mail:.1f} ms CPU per mail of {len(mail):,} bytes ({args.mails} mails)")
    if args.profile:
        async def inline(function, *args, **kwargs):
            return function(*args, **kwargs)

        asyncio.to_thread = inline  # cProfile sees only this thread: run the thread work here
        profile = cProfile.Profile()
        profile.enable()
        asyncio.run(relay_all(mails[args.mails:]))
        profile.disable()
        pstats.Stats(profile).sort_stats(args.profile).print_stats(25)
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
