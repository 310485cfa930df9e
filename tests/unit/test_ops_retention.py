"""Retention: under a steady stream of mail the database stops growing once the retention
applies, while what is younger than its retention stays; the `purge` command and the gateway's
periodic purge apply the configured retention; what is still needed (an item still due, the
records of a live transfer, recent audit events) is never forgotten; retention settings are
checked at start-up.

The stream runs through the real relay (its declared stages, a real store in a temporary
directory), the real outbox worker and the real purge, with a fake clock moved over simulated
days; the next hop accepts everything. No socket, no process."""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import gateway.store as gateway_store
from gateway.app import Gateway, open_store
from gateway.cli import main as cli_main
from gateway.config import Config, ConfigError, build_config
from gateway.model import Envelope
from gateway.notify.compose import NoticeComposer
from gateway.notify.worker import OutboxWorker
from gateway.ops.housekeeping import RETENTION_BATCH, PurgeReport, format_report, purge
from gateway.outbound.dkim import DkimSigner
from gateway.pipeline.notice import make_template_env
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.relay import Relay
from gateway.pipeline.store_step import TransferWriter
from gateway.store.db import Database
from gateway.store.outbox import OutboxStore
from tests.support import evasions as ev
from tests.support.accepting_hop import AcceptingNextHop
from tests.support.clock import FakeClock

INTERNAL = "kacho@city.example.lg.jp"
PARTNERS = ("tanaka@partner.example.com", "suzuki@partner.example.com")
DAY = timedelta(days=1)
STEP = timedelta(hours=6)  # one PPAP mail and one plain mail per step, a purge after each
TABLES = ("transfers", "files", "links", "deliveries", "events", "outbox", "transfer_controls",
          "unlocks", "link_otp", "link_password_guard", "extracted_files")
# Short retentions, so that the steady state comes within simulated days.
RETENTION = {"deliveries": "2d", "outbox": "3d", "audit": "5d"}
MASTER_KEY = bytes(range(32))


def retention_config(tmp_path: Path, retention: dict[str, str] = RETENTION) -> Config:
    return build_config({
        "gateway": {"internal_domains": ["city.example.lg.jp"]},
        "storage": {"data_dir": str(tmp_path / "data")},
        "portal": {"public_url": "https://files.city.example.lg.jp"},
        "policy": {"link_lifetime": "1d", "max_link_lifetime": "1d"},
        "retention": retention,
    }, environ={})


@dataclass
class Sent:
    at: datetime
    envelope: Envelope
    data: bytes


class Stream:
    """A gateway's store, relay and outbox worker in-process, and the mail it has relayed."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = retention_config(tmp_path)
        master_key = secrets.token_bytes(32)
        self.db, self.blobs = open_store(self.config, master_key)
        self.clock = FakeClock()
        self.hop = AcceptingNextHop()
        templates = make_template_env(self.config.gateway.templates_dir)
        self.relay = Relay(
            self.config, self.db,
            TransferWriter(self.db, self.blobs, master_key, self.config.storage.chunk_size),
            self.hop, DkimSigner([]), templates, self.clock, NoticeQueue(self.db, master_key),
        )
        composer = NoticeComposer(
            self.db, templates, DkimSigner([]), from_address=self.config.notify.from_address,
            public_url=self.config.portal.public_url, timezone=self.config.gateway.timezone,
            master_key=master_key,
        )
        self.worker = OutboxWorker(OutboxStore(self.db), composer, self.hop, None,
                                   self.config.notify, self.clock)
        self.sent: list[Sent] = []
        self.reports: list[PurgeReport] = []

    def relay_one(self, envelope: Envelope, data: bytes) -> int:
        outcome = asyncio.run(self.relay.handle(envelope, data))
        return outcome.reply.code

    def one_step(self) -> None:
        """Six hours: a PPAP mail to two partners, a plain mail inside, the outbox worker's
        round, then the periodic purge."""
        self.clock.advance(hours=6)
        number = f"{len(self.sent):06d}"  # fixed width: every day's rows are the same size
        head = (f"From: <{ev.SENDER}>\r\nTo: <{PARTNERS[0]}>, <{PARTNERS[1]}>\r\n"
                f"Subject: estimate {number}\r\nMessage-ID: <ppap-{number}@city.example.lg.jp>\r\n"
                "MIME-Version: 1.0\r\n").encode()
        ppap = ev.mixed(ev.TEXT, ev.zip_part(), head=head)
        plain = (f"From: <{ev.SENDER}>\r\nTo: <{INTERNAL}>\r\nSubject: minutes {number}\r\n"
                 f"Message-ID: <plain-{number}@city.example.lg.jp>\r\n\r\nSee you.\r\n").encode()
        for envelope, data in ((Envelope(ev.SENDER, PARTNERS), ppap),
                               (Envelope(ev.SENDER, (INTERNAL,)), plain)):
            assert self.relay_one(envelope, data) == 250
            self.sent.append(Sent(self.clock(), envelope, data))
        asyncio.run(self.worker.run_once())
        self.reports.append(
            purge(self.db, self.blobs, self.clock(), retention=self.config.retention)
        )

    def run_days(self, days: int) -> None:
        for _ in range(int(days * DAY / STEP)):
            self.one_step()

    def raw(self, sql: str, params: tuple = ()) -> list[tuple]:
        connection = sqlite3.connect(self.db.path)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def row_counts(self) -> dict[str, int]:
        return {table: self.raw(f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}

    def compacted_size(self) -> int:
        """The size of the database once its free pages are squeezed out (VACUUM INTO a copy):
        what the records take, whatever pages SQLite keeps free for reuse."""
        copy = self.db.path.with_name(f"compacted-{secrets.token_hex(4)}.sqlite3")
        self.raw("VACUUM INTO ?", (str(copy),))
        try:
            return copy.stat().st_size
        finally:
            copy.unlink()


@pytest.fixture
def stream(tmp_path: Path):
    opened = Stream(tmp_path)
    yield opened
    opened.db.close()


def test_under_a_steady_stream_the_database_stops_growing_once_retention_applies(stream):
    # Before any retention can apply (a transfer lives 1 day, its records 5 more) it grows.
    stream.run_days(2)
    early = stream.row_counts()
    early_size = stream.compacted_size()
    stream.run_days(6)  # day 8: everything has been through its retention at least once
    steady, steady_size = stream.row_counts(), stream.compacted_size()
    assert steady["deliveries"] > early["deliveries"] and steady["events"] > early["events"]
    assert steady_size > early_size

    daily = []
    for _ in range(3):
        stream.run_days(1)
        daily.append((stream.row_counts(), stream.compacted_size()))
    assert daily == [(steady, steady_size)] * 3, \
        "the same mail every day: the same rows, the same size, every day"
    assert steady["transfers"] < len(stream.sent) // 2  # older transfers were forgotten
    last = stream.reports[-1]
    assert last.deliveries_forgotten and last.outbox_forgotten and last.transfers_forgotten \
        and last.events_forgotten
    assert "past retention forgot" in format_report(last)


def test_what_is_younger_than_its_retention_is_kept(stream):
    stream.run_days(8)
    now = stream.clock()

    # A client's retry of a message it sent just under 2 days ago still reaches nobody twice;
    # the records of older ones are forgotten.
    recent = [s for s in stream.sent if s.at >= now - timedelta(days=2)]
    older = [s for s in stream.sent if s.at < now - timedelta(days=2)]
    assert stream.raw("SELECT count(*) FROM deliveries")[0][0] == \
        sum(len(s.envelope.rcpt_tos) for s in recent)
    retried = recent[0]
    before = len(stream.hop.delivered)
    assert stream.relay_one(retried.envelope, retried.data) == 250
    assert len(stream.hop.delivered) == before
    assert older, "the stream ran long enough for some records to go"

    # Audit events: none older than 5 days, every one younger still there, in order.
    horizon = now - timedelta(days=5)
    events = stream.db.events()
    assert events and min(e.at for e in events) >= horizon
    assert min(e.at for e in events) < horizon + STEP
    ids = [e.id for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no gap among the events kept"

    # Transfers: the ones that expired less than 5 days ago are still listed, with their links
    # (expired: their files are gone) and the sender's management controls.
    listed = stream.db.transfers_since(now - timedelta(days=30))
    assert listed and min(t.expires_at for t in listed) >= horizon
    assert min(t.expires_at for t in listed) < horizon + STEP
    for transfer in listed:
        links = stream.db.links_of(transfer.id)
        assert len(links) == 2
        expected = "expired" if transfer.state == "purged" else "active"
        assert {link.state for link in links} == {expected}
        assert stream.raw("SELECT count(*) FROM transfer_controls WHERE transfer_id = ?",
                          (transfer.id,)) == [(1,)]

    # Outbox: items sent less than 3 days ago stay (the management page shows them), and so
    # does the receipt still waiting for its minute (due, never forgotten).
    items = OutboxStore(stream.db).items()
    sent = [item for item in items if item.state == "sent"]
    assert [item.state for item in items] == ["sent"] * len(sent) + ["pending"]
    assert min(item.due_at for item in sent) >= now - timedelta(days=3)
    assert min(item.due_at for item in sent) < now - timedelta(days=3) + STEP


# -- what the retention never forgets ------------------------------------------------------


def a_transfer(db, transfer_id: str, state: str, expires_at: datetime) -> None:
    db.insert_transfer(
        id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@x>",
        sender=ev.SENDER, department="default", subject="見積書", created_at=expires_at - DAY,
        expires_at=expires_at, password_channel="none", locale="ja", state=state,
    )


def test_an_item_still_due_or_of_a_live_transfer_outlives_the_outbox_retention(tmp_path):
    config = retention_config(tmp_path)
    now = FakeClock()()
    long_ago = now - timedelta(days=40)
    db, blobs = open_store(config, MASTER_KEY)
    outbox = OutboxStore(db)
    try:
        a_transfer(db, "live", "active", now + DAY)
        a_transfer(db, "ended", "purged", long_ago)
        retried = outbox.enqueue(kind="receipt", now=long_ago, due_at=long_ago,
                                 transfer_id="ended")  # still pending: being retried
        of_live = outbox.enqueue(kind="receipt", now=long_ago, due_at=long_ago,
                                 transfer_id="live")
        finished = outbox.enqueue(kind="receipt", now=long_ago, due_at=long_ago,
                                  transfer_id="ended")
        for item_id in (of_live, finished):
            assert outbox.mark_sent(outbox.get(item_id), long_ago)

        report = purge(db, blobs, now, retention=config.retention)

        assert report.outbox_forgotten == 1
        assert {item.id for item in outbox.items()} == {retried, of_live}
        # The ended transfer keeps its record while an item about it is still pending.
        assert report.transfers_forgotten == 0 and db.transfer("ended") is not None
    finally:
        db.close()


def purge_one_of_two_events(config) -> None:
    """Two events, one past the retention: the purge forgets that one only."""
    now = FakeClock()()
    db, blobs = open_store(config, MASTER_KEY)
    try:
        db.append_event("relay.test", now - timedelta(days=6))
        db.append_event("relay.test", now - timedelta(days=1))
        assert purge(db, blobs, now, retention=config.retention).events_forgotten == 1
    finally:
        db.close()


def test_the_audit_trail_stays_append_only_inside_its_retention(tmp_path):
    config = retention_config(tmp_path)
    purge_one_of_two_events(config)
    with sqlite3.connect(config.storage.database) as raw:  # the guard lives in the file
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM events")
        with pytest.raises(sqlite3.IntegrityError, match="only moves forward"):
            raw.execute("UPDATE audit_horizon SET forget_before = ''")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("UPDATE events SET kind = 'forged'")
    assert remaining_kinds(config) == ["relay.test"]


def test_a_backlog_larger_than_one_batch_is_forgotten_in_one_purge(tmp_path):
    config = retention_config(tmp_path)
    now = FakeClock()()
    db, blobs = open_store(config, MASTER_KEY)
    try:
        backlog = 2 * RETENTION_BATCH + 1  # what an upgrade finds: years of records
        with db.transaction():
            for number in range(backlog):
                db.record_delivery(f"fp-{number}", INTERNAL, now - timedelta(days=30))
        db.record_delivery("fp-young", INTERNAL, now - timedelta(hours=1))
        assert purge(db, blobs, now, retention=config.retention).deliveries_forgotten == backlog
        assert db.delivered_recipients("fp-young") == {INTERNAL}
        assert db.delivered_recipients("fp-0") == set()
    finally:
        db.close()


def test_an_upgrade_ends_the_active_links_of_transfers_purged_before_it(tmp_path):
    bundled = Path(gateway_store.__file__).parent / "migrations" / "sqlite"
    before = tmp_path / "before-0007"
    before.mkdir()
    for script in bundled.glob("000[1-6]_*.sql"):
        (before / script.name).write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    now = FakeClock()()
    old = Database(tmp_path / "meta.db", migrations=before)
    try:
        for transfer_id, state in (("purged", "purged"), ("live", "active")):
            a_transfer(old, transfer_id, state, now + DAY)
            old.insert_link(id=f"{transfer_id}-l", transfer_id=transfer_id,
                            recipient=PARTNERS[0], token_hash=f"hash-{transfer_id}",
                            created_at=now, state="active")
    finally:
        old.close()
    with Database(tmp_path / "meta.db") as upgraded:
        assert upgraded.link("purged-l").state == "expired"
        assert upgraded.link("live-l").state == "active"


def remaining_kinds(config: Config) -> list[str]:
    db, _blobs = open_store(config, MASTER_KEY)
    try:
        return [event.kind for event in db.events()]
    finally:
        db.close()


# -- the purge command and the gateway's periodic purge ------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\ninternal_domains = ["city.example.lg.jp"]\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        '[retention]\ndeliveries = "3d"\noutbox = "3d"\naudit = "10d"\n',
        encoding="utf-8",
    )
    return path


def old_and_young_records(config: Config, now: datetime) -> None:
    """Two delivery records and two audit events: one of each past its retention."""
    db, _blobs = open_store(config, MASTER_KEY)
    try:
        db.record_delivery("fp-old", INTERNAL, now - timedelta(days=4))
        db.record_delivery("fp-young", INTERNAL, now - timedelta(days=2))
        db.append_event("relay.test", now - timedelta(days=11), detail={"which": "old"})
        db.append_event("relay.test", now - timedelta(days=9), detail={"which": "young"})
    finally:
        db.close()


def remaining(config: Config) -> tuple[set[str], list[str]]:
    db, _blobs = open_store(config, MASTER_KEY)
    try:
        fingerprints = {fp for fp in ("fp-old", "fp-young") if db.delivered_recipients(fp)}
        return fingerprints, [e.detail["which"] for e in db.events()]
    finally:
        db.close()


def test_the_purge_command_applies_the_configured_retention(tmp_path, capsys, monkeypatch):
    config_path = write_config(tmp_path)
    monkeypatch.setenv("PPAP_GATEWAY_MASTER_KEY", base64.b64encode(MASTER_KEY).decode())
    config = build_config({
        "gateway": {"internal_domains": ["city.example.lg.jp"]},
        "storage": {"data_dir": str(tmp_path / "data")},
    }, environ={})
    old_and_young_records(config, datetime.now(timezone.utc))

    assert cli_main(["purge", "--config", str(config_path)]) == 0

    assert capsys.readouterr().out.strip() == (
        "purged 0 transfers, 0 blobs, 0 B freed, 0 orphans;"
        " past retention forgot 1 delivery record, 1 audit event"
    )
    assert remaining(config) == ({"fp-young"}, ["young"])


def test_the_gateways_periodic_purge_applies_the_configured_retention(tmp_path):
    config = retention_config(tmp_path, {"deliveries": "3d", "outbox": "3d", "audit": "10d"})
    clock = FakeClock()
    old_and_young_records(config, clock())
    gateway = Gateway(config, clock=clock)
    gateway.db, gateway.blobs = open_store(config, MASTER_KEY)
    try:
        report = asyncio.run(gateway.purge_now())  # what the housekeeping timer calls
    finally:
        gateway.db.close()
    assert (report.deliveries_forgotten, report.events_forgotten) == (1, 1)
    assert remaining(config) == ({"fp-young"}, ["young"])


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    ("retention.deliveries=12h",
     "retention.deliveries: must be at least 1d, got 12h: a client retries a deferred message"
     " for days (Postfix: maximal_queue_lifetime = 5d)"),
    ("retention.audit=0", "retention.audit: must be at least 1d, got 0s"),
    ("retention.outbox=2d",
     "retention.outbox: must be at least retention.deliveries (1w): a retry within that time"
     " must still find the notices already sent"),
    ("retention.audit=forever", "retention.audit: expected a duration like '7d'"),
])
def test_retention_settings_that_would_lose_what_is_needed_are_refused(override, message):
    with pytest.raises(ConfigError) as refused:
        build_config({}, (override,), environ={})
    assert str(refused.value).startswith(message)


def test_retention_defaults_keep_a_week_of_deliveries_and_the_audit_over_a_year():
    retention = build_config({}, environ={}).retention
    assert (retention.deliveries, retention.outbox, retention.audit) == (
        timedelta(days=7), timedelta(days=30), timedelta(days=400))
