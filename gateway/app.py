"""Assemble the running gateway from a Config: the edges (disk, network, clock) are made here.

`Gateway.start()` opens the store, the next hop, and the listeners (SMTP, download portal,
admin) in the running event loop, and starts housekeeping; `stop()` closes them in reverse.
Tests run the same object on ephemeral ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from datetime import datetime, timedelta, timezone
from typing import Callable

from aiohttp import web

from gateway.config import Config, ConfigError, PostgresUrl, StorageSettings
from gateway.inflight import DataBudget
from gateway.ledger import LedgerRow, SharedDataBudget, SharedRelayingNow, SharedSessionSlots
from gateway.log import MessageLogger
from gateway.notify.compose import NoticeComposer
from gateway.notify.webhook import WebhookSender
from gateway.notify.worker import OutboxWorker
from gateway.ops.admin import build_admin_app, next_hop_check, store_writable_check
from gateway.ops.housekeeping import (
    PurgeReport,
    format_report,
    purge_on_one_node,
    run_periodically,
)
from gateway.ops.metrics import GatewayMetrics
from gateway.outbound.dkim import DkimKey, DkimSigner
from gateway.outbound.dkim_keys import load_private_key
from gateway.outbound.hop import NextHop
from gateway.outbound.next_hops import make_next_hop
from gateway.pipeline.admission import AcrossNodes, RelayingNow
from gateway.pipeline.notice import make_template_env
from gateway.pipeline.notify_step import NoticeQueue
from gateway.pipeline.relay import Relay
from gateway.pipeline.store_step import TransferWriter
from gateway.pipeline.unlock_step import PasswordMailUnlocker
from gateway.scan.clamd import ClamdScanner
from gateway.smtp.access import (
    ACCOUNT_SCOPE,
    CLIENT_SCOPE,
    AuthFailureThrottle,
    PasswordFileAuthenticator,
    RelayAccess,
    load_users,
)
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.drain import SmtpListener
from gateway.smtp.server import RelaysInFlight, start_smtp_server
from gateway.store.blob_backends import BlobBackend, StorageError
from gateway.store.blob_backends.directory import LocalDirectoryBackend
from gateway.store.blobs import BlobStore
from gateway.store.controls import ControlsStore
from gateway.store.crypto import seal_small
from gateway.store.db import Database, MetadataError, metadata_exists
from gateway.store.engines import DatabaseUnreachable
from gateway.store.keys import (
    DOWNLOAD_PASSWORD_KEY,
    PORTAL_SECRET,
    KeyRing,
    MasterKeyError,
    load_or_create_master_key,
    load_retired_master_keys,
    master_key_ring,
)
from gateway.store.outbox import OutboxStore
from gateway.store.relaying import RelayClaims
from gateway.store.throttles import ThrottleStore
from gateway.unlock.opening import TransferOpener
from gateway.web.link_gate import REFUSAL_STATUS
from gateway.web.portal import build_portal_app

log = logging.getLogger("gateway")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def load_signer(config: Config, clock: Callable[[], datetime] | None = None) -> DkimSigner:
    """The DKIM signer of config's keys; `clock` gives t= (the gateway's clock, as everywhere)."""
    keys = []
    for index, key in enumerate(config.dkim_keys):
        try:
            keys.append(DkimKey(key.domain, key.selector, load_private_key(key.key_file), key.algorithm))
        except (ValueError, OSError) as error:
            raise ConfigError(f"dkim.keys[{index}].key_file", f"{key.key_file}: {error}") from None
    return DkimSigner(keys, clock=clock)


def unsigned_domains(config: Config) -> list[str]:
    signed = {k.domain for k in config.dkim_keys}
    return sorted(d for d in config.gateway.internal_domains if d.lstrip("*.") not in signed)


def make_scanner(config: Config) -> ClamdScanner | None:
    if not config.scan.clamd:
        return None
    return ClamdScanner(
        config.scan.clamd, timeout=config.scan.timeout.total_seconds(),
        max_stream=config.scan.max_stream,
    )


def load_master_keys(config: Config) -> KeyRing:
    """The current master key and the retired ones a rotation still needs, read once."""
    storage = config.storage
    try:
        # Once metadata exists, a missing key file is an accident, not a first start: a fresh
        # key would make every stored file unreadable.
        current = load_or_create_master_key(
            storage.master_key_file, storage.master_key_from_env,
            may_create=not _metadata_exists(config),
        )
    except MasterKeyError as error:
        raise ConfigError("storage.master_key_file", str(error)) from None
    try:
        retired = load_retired_master_keys(
            storage.retired_master_key_files, storage.retired_master_keys_from_env)
        return master_key_ring(current, retired)
    except MasterKeyError as error:
        raise ConfigError("storage.retired_master_key_files", str(error)) from None


def _metadata_exists(config: Config) -> bool:
    try:
        return metadata_exists(config.storage.database)
    except DatabaseUnreachable as error:
        raise ConfigError("storage.database", str(error)) from None


def open_store(config: Config, master_keys: KeyRing | bytes) -> tuple[Database, BlobStore]:
    storage = config.storage
    storage.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        db = Database(storage.database)
    except DatabaseUnreachable as error:  # one line at start-up, not a traceback
        raise ConfigError("storage.database", str(error)) from None
    return db, BlobStore(blob_backend(storage), master_keys, storage.chunk_size)


def blob_backend(storage: StorageSettings) -> BlobBackend:
    """Where the sealed files lie, as storage.blobs says."""
    if storage.blobs == "database":
        assert isinstance(storage.database, PostgresUrl)  # checked when the config was read
        from gateway.store.blob_backends.postgres import PostgresChunkBackend  # psycopg: only here

        try:
            return PostgresChunkBackend(storage.database.url)
        except StorageError as error:
            raise ConfigError("storage.blobs", str(error)) from None
    return LocalDirectoryBackend(storage.blobs_dir)


StoreOpener = Callable[[Config, KeyRing], tuple[Database, BlobStore]]


def claim_data_dir(config: Config) -> int | None:
    """An exclusive lock on the data directory, held (by the open descriptor) while this gateway
    runs and released by the kernel even on SIGKILL; None when another gateway holds it."""
    descriptor = os.open(config.storage.data_dir / ".gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def clean_up_after_crash(
    db: Database, blobs: BlobStore, now: datetime, sole_writer: bool
) -> PurgeReport:
    """Run before the listeners open. As the data directory's `sole_writer` no blob can be in
    the making, so temp files and blobs no row refers to (a crash between blob write and
    metadata commit) go at once, without the periodic purge's grace; a purge a crash
    interrupted is finished either way (or by the node of a cluster purging right now)."""
    try:
        grace = {"orphan_grace": timedelta(0)} if sole_writer else {}
        report = purge_on_one_node(db, blobs, now, **grace)
    except MetadataError as error:  # not fatal: the periodic purge tries again
        log.error("start-up clean-up failed: %s", error)
        return PurgeReport(errors=1)
    if report is None:
        log.info("start-up clean-up skipped: another node is purging the store")
        return PurgeReport()
    if report.orphans_deleted or report.transfers_purged or report.errors:
        log.warning("start-up clean-up: %s", format_report(report))
    return report


async def start_web(
    app: web.Application, host: str, port: int, socks: tuple[socket.socket, ...] = ()
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sites = [web.SockSite(runner, sock) for sock in socks] or [web.TCPSite(runner, host, port)]
    for site in sites:
        await site.start()
    return runner, runner.addresses[0][1]


@dataclass(frozen=True)
class WorkerRole:
    """How a Gateway runs as one worker of `serve` (gateway/supervisor.py): on listening sockets
    the supervisor bound, counting its sessions and bytes in flight with the other workers in
    the shared ledger. Only the leader serves the admin listener and runs the timers
    (housekeeping) and the notice worker; the supervisor has already cleaned up after a crash.
    (On a cluster every node has its leader: the store keeps them from doing the same work.)"""

    smtp_sockets: tuple[socket.socket, ...]
    portal_sockets: tuple[socket.socket, ...]
    admin_sockets: tuple[socket.socket, ...]
    ledger_row: LedgerRow
    leader: bool
    # A pipe every worker writes a byte to when it queues a notice, and the leader reads: its
    # notice worker wakes whichever worker relayed the message.
    notice_wake: tuple[int, int]
    metrics_dir: Path  # where each worker keeps its counts, for the leader's /metrics to sum
    workers: int = 1  # how many serve together


class Gateway:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime] = utc_now,
        next_hop: NextHop | None = None,
        open_storage: StoreOpener = open_store,
        role: WorkerRole | None = None,
    ):
        """`open_storage` exists so tests can hand in a store whose disk fails on demand;
        `role`: run as a worker of `serve`'s supervisor (else on its own, binding its ports)."""
        self.config = config
        self.role = role
        self._open_storage = open_storage
        self._data_dir_lock: int | None = None
        self.clock = clock
        self.metrics = GatewayMetrics(
            refusal_reasons=tuple(REFUSAL_STATUS), shared_dir=role.metrics_dir if role else None
        )
        self._next_hop = next_hop
        self.db: Database | None = None
        self.blobs: BlobStore | None = None
        self._server: SmtpListener | None = None
        self._relays = RelaysInFlight()
        self._runners: list[web.AppRunner] = []
        self._relaying: RelayingNow | AcrossNodes | None = None
        self._purger: asyncio.Task | None = None
        self._notifier: asyncio.Task | None = None
        self._notifier_stop = asyncio.Event()
        self.notify_wake = asyncio.Event()
        self._webhooks: WebhookSender | None = None
        self._opener: TransferOpener | None = None
        self._scanner: ClamdScanner | None = None
        self.smtp_port: int | None = None
        self.portal_port: int | None = None
        self.admin_port: int | None = None

    @property
    def leads(self) -> bool:
        """Runs what one process runs for all (admin, housekeeping, the notice worker): on its
        own, or as the leading worker of `serve`. Every node of a cluster has one: purges take
        turns (exclusive_run) and notices are claimed (OutboxStore.claim_due)."""
        return self.role is None or self.role.leader

    async def start(self) -> None:
        config = self.config
        master_keys = load_master_keys(config)
        self.db, self.blobs = await asyncio.to_thread(self._open_storage, config, master_keys)
        if self.role is None:  # a worker's supervisor has done this before starting it
            self._data_dir_lock = claim_data_dir(config)
            if self._data_dir_lock is None:
                log.warning("another gateway uses %s: start-up clean-up keeps its grace period",
                            config.storage.data_dir)
            await asyncio.to_thread(
                clean_up_after_crash, self.db, self.blobs, self.clock(),
                self._data_dir_lock is not None and not config.storage.shared,
            )
        if self._next_hop is None:
            hop = config.next_hop
            self._next_hop = make_next_hop(
                hop.url, starttls=hop.starttls, timeout=hop.timeout.total_seconds(),
                helo_name=config.gateway.hostname, pool_size=hop.pool_size,
            )
        signer = load_signer(config, self.clock)
        # One opener for both ways a ZIP password arrives: the password mail and the sender's form.
        # Unlocking charges what it holds to the budget the SMTP listener charges DATA to.
        self._scanner = make_scanner(config)
        role = self.role
        self.in_flight = (
            SharedDataBudget(role.ledger_row, config.smtp.max_data_in_flight) if role
            else DataBudget(config.smtp.max_data_in_flight)
        )
        self._opener = TransferOpener(config, self.db, self.blobs, self._scanner, self.in_flight)
        await self._start_smtp(master_keys, signer)
        if self.leads:
            self._start_notifier(master_keys, signer)
        await self._start_portal(master_keys)
        if self.leads:
            await self._start_admin()
            self._purger = asyncio.create_task(run_periodically(
                config.housekeeping.purge_interval, self.purge_now,
                logging.getLogger("gateway.housekeeping"),
            ))
        if role is not None:
            log.info("worker ready (pid %d%s)", os.getpid(), ", leader" if self.leads else "")
            return
        log.info(
            "ready: smtp=%s:%s portal=%s:%s admin=%s:%s next_hop=%s data=%s"
            " logs=stderr (one line per message)",
            config.smtp.listen_host, self.smtp_port, config.portal.listen_host, self.portal_port,
            config.admin.listen_host, self.admin_port,
            self._next_hop.describe(), config.storage.data_dir.resolve(),
        )

    async def _start_smtp(self, master_keys: KeyRing, signer: DkimSigner) -> None:
        config = self.config
        for domain in unsigned_domains(config) if self.leads else ():
            log.warning("no DKIM key for %s: its converted mail goes out unsigned", domain)
        writer = TransferWriter(self.db, self.blobs, master_keys, config.storage.chunk_size)
        self._relaying = self._messages_relaying()
        relay = Relay(
            config, self.db, writer, self._next_hop, signer,
            make_template_env(config.gateway.templates_dir), self.clock,
            NoticeQueue(self.db, master_keys), self.wake_notices,
            PasswordMailUnlocker(self.db, self._opener, self.clock), self._scanner,
            self._relaying,
        )
        authenticator = None
        if config.smtp.auth_users_file:
            # Counted in the store: all workers (and nodes) together allow each limit once.
            throttles = ThrottleStore(self.db)
            throttle = AuthFailureThrottle(
                throttles, CLIENT_SCOPE, config.smtp.auth_max_failures,
                config.smtp.auth_failure_window, self.clock,
            )
            per_account = AuthFailureThrottle(
                throttles, ACCOUNT_SCOPE, config.smtp.auth_max_failures_per_account,
                config.smtp.auth_account_window, self.clock,
            )
            authenticator = PasswordFileAuthenticator(
                load_users(config.smtp.auth_users_file), throttle, per_account
            )
        handler = GatewayHandler(
            relay, RelayAccess(config.smtp.allowed_clients), config.smtp.max_recipients,
            MessageLogger(config.gateway.log_format), self.metrics,
        )
        role = self.role
        self._server = await start_smtp_server(
            handler, config.smtp, config.gateway.hostname, authenticator, self._relays,
            budget=self.in_flight,
            slots=SharedSessionSlots(
                role.ledger_row, config.smtp.max_sessions, config.smtp.max_sessions_per_client
            ) if role else None,
            socks=role.smtp_sockets if role else (),
        )
        self.smtp_port = self._server.port

    def _messages_relaying(self) -> RelayingNow | AcrossNodes:
        """Who knows the messages being relayed: this process, the workers' ledger, and on a
        shared database (a cluster) a claim row per message as well."""
        local = SharedRelayingNow(self.role.ledger_row) if self.role else RelayingNow()
        if not self.config.storage.shared:
            return local  # one machine: no database round trip per message
        return AcrossNodes(local, RelayClaims(self.db), self.config.gateway.node_id, self.clock)

    def _start_notifier(self, master_keys: KeyRing, signer: DkimSigner) -> None:
        """The worker that sends what the outbox holds: passwords, receipts, codes, webhooks."""
        config = self.config
        composer = NoticeComposer(
            self.db, make_template_env(config.gateway.templates_dir), signer,
            from_address=config.notify.from_address, public_url=config.portal.public_url,
            timezone=config.gateway.timezone, master_key=master_keys,
            webhook_url=config.webhook.url,
        )
        if config.webhook.url:
            self._webhooks = WebhookSender(
                config.webhook.secret, config.webhook.timeout.total_seconds()
            )
        worker = OutboxWorker(
            OutboxStore(self.db), composer, self._next_hop, self._webhooks, config.notify,
            self.clock, wake=self.notify_wake, node=config.gateway.node_id,
        )
        self._notifier_stop.clear()
        self._notifier = asyncio.create_task(worker.run(self._notifier_stop))
        if self.role is not None:
            read_end = self.role.notice_wake[0]
            asyncio.get_running_loop().add_reader(read_end, self._woken_by_a_worker, read_end)

    def wake_notices(self) -> None:
        """A notice was queued: wake the notice worker, in whichever process it runs."""
        self.notify_wake.set()
        if not self.leads:
            try:
                os.write(self.role.notice_wake[1], b"!")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups the leader has not read yet: it will

    def _woken_by_a_worker(self, read_end: int) -> None:
        try:
            os.read(read_end, 4096)
        except BlockingIOError:
            return  # another leader (a reload's old one) read it first
        self.notify_wake.set()

    async def _start_portal(self, master_keys: KeyRing) -> None:
        config = self.config
        # Derived from each master key: what a retired one signed or hashed is still checked.
        portal_secrets = master_keys.derive(PORTAL_SECRET)
        password_keys = master_keys.derive(DOWNLOAD_PASSWORD_KEY)
        app = build_portal_app(
            settings=config.portal, db=self.db, blobs=self.blobs,
            templates_dir=config.gateway.templates_dir, timezone=config.gateway.timezone,
            secret=portal_secrets.current, retired_secrets=portal_secrets.retired,
            clock=self.clock,
            events_hook=self._count_portal_event,
            outbox=OutboxStore(self.db), controls=ControlsStore(self.db),
            seal=lambda item_id, data: seal_small(master_keys, item_id.encode(), data),
            wake_outbox=self.wake_notices, opener=self._opener,
            password_key=password_keys.current, retired_password_keys=password_keys.retired,
        )
        runner, self.portal_port = await start_web(
            app, config.portal.listen_host, config.portal.listen_port,
            self.role.portal_sockets if self.role else (),
        )
        self._runners.append(runner)

    def _count_portal_event(self, kind: str, labels: dict) -> None:
        if kind == "download":
            self.metrics.download()
        elif kind == "refusal":
            self.metrics.refusal(labels.get("reason", "other"))

    async def _start_admin(self) -> None:
        config = self.config
        checks = [
            store_writable_check(config.storage.data_dir, self.db),
            next_hop_check(self._next_hop, timeout=config.next_hop.timeout.total_seconds() + 1),
        ]
        app = build_admin_app(metrics=self.metrics, health_checks=checks)
        runner, self.admin_port = await start_web(
            app, config.admin.listen_host, config.admin.listen_port,
            self.role.admin_sockets if self.role else (),
        )
        self._runners.append(runner)

    async def purge_now(self) -> PurgeReport | None:
        """One purge with the retention; None when another node is purging right now."""
        return await asyncio.to_thread(
            purge_on_one_node, self.db, self.blobs, self.clock(),
            retention=self.config.retention,
        )

    async def drain(self, refuse_new: bool) -> None:
        """Before stop(): let the messages under way finish, up to gateway.stop_timeout, closing
        idle sessions with 421. `refuse_new` (stopping): new clients are answered 421; else
        (a reload's old worker) this worker stops accepting and the new workers take them."""
        if self._server is None:
            return
        timeout = self.config.gateway.stop_timeout.total_seconds()
        if not refuse_new:
            for runner in self._runners:
                for site in list(runner.sites):
                    await site.stop()  # requests under way go on until runner.cleanup()
        if not await self._server.drain(refuse_new, timeout):
            log.warning("stopping: %d session(s) still open after %s",
                        len(self._server.sessions), self.config.gateway.stop_timeout)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        await self._finish_relays()
        if isinstance(self._relaying, AcrossNodes):
            await self._relaying.settled()  # their claims let go before the store closes
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._notifier is not None:
            if self.role is not None:
                asyncio.get_running_loop().remove_reader(self.role.notice_wake[0])
            self._notifier_stop.set()
            self.notify_wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notifier
            self._notifier = None
        if self._webhooks is not None:
            await self._webhooks.close()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger  # a purge already running finishes first
            self._purger = None
        if self._next_hop is not None:
            await self._next_hop.close()
        if self.db is not None:
            await asyncio.to_thread(self.db.close)
            self.db = None
        if self.blobs is not None:
            await asyncio.to_thread(self.blobs.close)
            self.blobs = None
        if self._data_dir_lock is not None:
            os.close(self._data_dir_lock)  # releases the lock
            self._data_dir_lock = None

    async def _finish_relays(self) -> None:
        """Let the messages being relayed finish (their next hop may have a copy already), for
        as long as one answer from the next hop may take; then cancel the rest: what they
        stored is rolled back, or reused by the sender's retry."""
        if not self._relays:
            return
        log.info("stopping: waiting for %d message(s) being relayed", len(self._relays))
        cancelled = await self._relays.finish(self.config.next_hop.timeout.total_seconds())
        if cancelled:
            log.warning("stopping: %d relay(s) cancelled after %s", cancelled,
                        self.config.next_hop.timeout)

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def with_ephemeral_port(config: Config) -> Config:
    """The same configuration listening on free loopback ports (tests, samples)."""
    return replace(
        config,
        smtp=replace(config.smtp, listen_host="127.0.0.1", listen_port=0),
        portal=replace(config.portal, listen_host="127.0.0.1", listen_port=0),
        admin=replace(config.admin, listen_host="127.0.0.1", listen_port=0),
    )
