"""The portal in-process for tests: a real Database and BlobStore in tmp_path and the portal app
over them, served by aiohttp's TestServer on a loopback port (a real socket: tests that use it
are end-to-end), with a clock tests can move.

PortalHarness has the store and the landing/download app; ChannelHarness adds what the separate
channel gives the portal (transfer controls, the outbox, a real sealer, a counted wake-up).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import BUNDLED_TEMPLATES, PortalSettings
from gateway.store.blobs import BlobStore
from gateway.store.controls import ControlsStore
from gateway.store.crypto import seal_small
from gateway.store.db import Database, FileRow
from gateway.store.outbox import OutboxStore
from gateway.store.passwords import hash_password, hash_token, new_token
from gateway.web import build_portal_app
from tests.support.clock import FakeClock
from tests.support.config import PUBLIC_URL
from tests.support.corpus import CORPUS

MASTER_KEY = bytes(range(32))
SECRET = hashlib.sha256(b"portal test secret").digest()
TOKYO = ZoneInfo("Asia/Tokyo")
SENDER = "somu@city.example.lg.jp"
RECIPIENT = "tanaka@partner.example.com"
JA_ZIP = "見積書一式_2026年11月.zip"  # the name 01_outlook_jis_aes256.json gives this file
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def corpus_file(name: str) -> tuple[bytes, str]:
    """The bytes of tests/corpus/files/NAME and the SHA-256 its sidecar states."""
    data = (CORPUS / "files" / name).read_bytes()
    sidecar = (CORPUS / "files" / f"{name}.sha256").read_text().split()[0]
    return data, sidecar


@dataclass
class Issued:
    token: str
    link_id: str
    transfer_id: str
    files: list[FileRow]

    @property
    def path(self) -> str:
        return f"/d/{self.token}"


@dataclass
class PortalHarness:
    """A real store in tmp_path and the portal app over it, with a clock tests can move."""

    tmp_path: Path
    settings: PortalSettings = field(default_factory=lambda: PortalSettings(public_url=PUBLIC_URL))
    chunk_size: int = 64 * 1024
    clock: FakeClock = field(default_factory=FakeClock)
    hook_calls: list[tuple[str, dict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db = Database(self.tmp_path / "meta.db")
        self.blobs = BlobStore(self.tmp_path / "blobs", MASTER_KEY, self.chunk_size,
                               fsync=lambda fd: None)
        self._count = 0

    def close(self) -> None:
        self.db.close()

    def _id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count:030d}"

    def add_transfer(
        self, files: list[tuple[str, bytes]], *, password: str | None = None,
        max_downloads: int = 0, link_state: str = "active", transfer_state: str = "active",
        lifetime: timedelta = timedelta(days=7), sender: str = SENDER,
        subject: str = "お見積りの件", recipients: tuple[str, ...] = (RECIPIENT,),
    ) -> list[Issued]:
        """Store files and links as pipeline/store_step.py does; one Issued per recipient."""
        now = self.clock()
        transfer_id = self._id("t")
        stored = []
        for name, data in files:
            chunks = (data[i:i + self.chunk_size] for i in range(0, len(data), self.chunk_size))
            stored.append((name, self.blobs.write(chunks)))
        issued = []
        with self.db.transaction():
            self.db.insert_transfer(
                id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@city>",
                sender=sender, department="somu", subject=subject, created_at=now,
                expires_at=now + lifetime, password_channel="none" if password is None
                else "recipient-email", locale="ja", state=transfer_state,
                password_hash=None if password is None else hash_password(password),
            )
            for position, (name, info) in enumerate(stored):
                self.db.insert_file(
                    id=self._id("f"), transfer_id=transfer_id, display_name=name,
                    content_type="application/zip", size=info.size, sha256=info.sha256,
                    blob_id=info.blob_id, wrapped_key=info.wrapped_key, position=position,
                )
            for recipient in recipients:
                token, link_id = new_token(), self._id("l")
                self.db.insert_link(
                    id=link_id, transfer_id=transfer_id, recipient=recipient,
                    token_hash=hash_token(token), created_at=now, state=link_state,
                    max_downloads=max_downloads,
                    activated_at=now if link_state == "active" else None,
                )
                issued.append(Issued(token, link_id, transfer_id, []))
        rows = self.db.files_of(transfer_id)
        for item in issued:
            item.files = rows
        return issued

    def add_one(self, name: str = JA_ZIP, data: bytes | None = None, **options: Any) -> Issued:
        if data is None:
            data = corpus_file("01_aes256_7zip_ja.zip")[0]
        return self.add_transfer([(name, data)], **options)[0]

    def app(self) -> aiohttp.web.Application:
        return build_portal_app(
            settings=self.settings, db=self.db, blobs=self.blobs,
            templates_dir=BUNDLED_TEMPLATES, timezone=TOKYO, secret=SECRET, clock=self.clock,
            events_hook=lambda kind, labels: self.hook_calls.append((kind, labels)),
        )

    def run(self, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            # No cookie jar: tests send and inspect cookies themselves.
            async with TestClient(TestServer(self.app()),
                                  cookie_jar=aiohttp.DummyCookieJar()) as client:
                return await scenario(client)

        return asyncio.run(main())

    def link(self, issued: Issued):
        return self.db.link_by_token_hash(hash_token(issued.token))

    def events(self, kind: str | None = None) -> list:
        return [e for e in self.db.events() if kind is None or e.kind == kind]


def open_harness(tmp_path: Path) -> Iterator[PortalHarness]:
    """Body of each test_portal_* module's `harness` fixture."""
    portal = PortalHarness(tmp_path)
    yield portal
    portal.close()


async def landing(client: TestClient, issued: Issued, **headers: str) -> tuple[int, str, Any]:
    response = await client.get(issued.path, headers=headers)
    return response.status, await response.text(), response


async def csrf_of(client: TestClient, issued: Issued, cookie: str = "") -> str:
    headers = {"Cookie": cookie} if cookie else {}
    _status, body, _ = await landing(client, issued, **headers)
    return CSRF_FIELD.search(body).group(1)


def set_cookies(response: Any) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


SAME_ORIGIN = {"Origin": PUBLIC_URL}
OTHER = "suzuki@other.example.net"


@dataclass
class ChannelHarness(PortalHarness):
    """The portal with everything the separate channel gives it."""

    wakes: list[int] = field(default_factory=list)
    seal: Callable[[str, bytes], bytes] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.controls = ControlsStore(self.db)
        self.outbox = OutboxStore(self.db)
        if self.seal is None:
            self.seal = lambda item_id, data: seal_small(MASTER_KEY, item_id.encode(), data)

    def app(self) -> aiohttp.web.Application:
        return build_portal_app(
            settings=self.settings, db=self.db, blobs=self.blobs,
            templates_dir=BUNDLED_TEMPLATES, timezone=TOKYO, secret=SECRET, clock=self.clock,
            events_hook=lambda kind, labels: self.hook_calls.append((kind, labels)),
            outbox=self.outbox, controls=self.controls, seal=self.seal,
            wake_outbox=lambda: self.wakes.append(1),
        )

    def controlled(self, files: list[tuple[str, bytes]] | None = None, *,
                   verify_recipient: bool = False, notify_sender: str = "never",
                   max_lifetime: timedelta = timedelta(days=30), **options: Any
                   ) -> tuple[str, list[Issued]]:
        """A transfer with controls, as store_step.py makes it: (management token, links)."""
        if files is None:
            files = [(JA_ZIP, corpus_file("01_aes256_7zip_ja.zip")[0])]
        issued = self.add_transfer(files, **options)
        token = new_token()
        self.controls.insert(
            transfer_id=issued[0].transfer_id, manage_token_hash=hash_token(token),
            verify_recipient=verify_recipient, notify_sender=notify_sender,
            max_expires_at=self.clock() + max_lifetime,
        )
        return token, issued

    def items(self, kind: str | None = None) -> list:
        return [i for i in self.outbox.items() if kind is None or i.kind == kind]


def open_channel_harness(tmp_path: Path, **options: Any) -> Iterator[ChannelHarness]:
    harness = ChannelHarness(tmp_path, **options)
    yield harness
    harness.close()


async def download(client, issued: Issued, file_id: str | None = None, cookie: str = "") -> int:
    csrf = await csrf_of(client, issued, cookie)
    path = f"{issued.path}/f/{file_id or issued.files[0].id}" if file_id != "all" \
        else f"{issued.path}/all"
    response = await client.post(path, data={"csrf": csrf},
                                 headers={**SAME_ORIGIN, **({"Cookie": cookie} if cookie else {})})
    await response.read()
    return response.status
