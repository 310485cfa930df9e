"""Crypto at rest, end to end (issue 6, point 7): a real gateway converts a real mail, the
portal is used over real HTTP, and then the data directory is attacked or inspected.

- A byte flipped anywhere in a stored blob stops the download before any plaintext of the
  damaged chunk leaves (earlier chunks may have gone: the portal hands out whole batches of
  FILE_BATCH_SIZE, and holds back one chunk until the next one has authenticated).
- A dump of the database holds no usable token, no password, no file content.
- After purge neither the blob, nor its wrapped key, nor its id is anywhere under the data
  directory (WAL and SHM files included).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.sample import build_encrypted_zip
from gateway.store.crypto import DEFAULT_CHUNK_SIZE, HEADER_SIZE, TAG_SIZE
from gateway.web.download import FILE_BATCH_SIZE
from tests.support.received import body_text, links_in, password_in
from tests.support.running import CORPUS, PUBLIC_URL, Corpus, corpus_mail, send_corpus

CHUNK = DEFAULT_CHUNK_SIZE
SEALED = CHUNK + TAG_SIZE
CHUNKS_PER_BATCH = FILE_BATCH_SIZE // CHUNK
OUTLOOK_MAIL = "01_outlook_jis_aes256"
FILE_ID = re.compile(r'action="/d/[^"/]+/f/([0-9a-f]+)"')
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


# -- a real Outlook mail carrying a ZIP several chunks long -----------------------------------


def marker() -> bytes:
    return b"PPAP-AT-REST-MARKER-" + os.urandom(8).hex().encode()


def big_encrypted_zip(mark: bytes, size: int = 23 * CHUNK + 1234) -> bytes:
    """An AES ZIP whose plaintext (to the gateway: the ZIP's own bytes) carries `mark` in the
    archive comment; the member is random, so the ZIP spans many chunks."""
    archive = build_encrypted_zip({"data.bin": os.urandom(size)})
    # Replace the empty comment of the end record (its last two bytes are the length).
    assert archive[-2:] == b"\x00\x00"
    return archive[:-2] + len(mark).to_bytes(2, "little") + mark


def outlook_mail_with(zip_bytes: bytes) -> Corpus:
    """The corpus's Outlook mail, byte for byte, with another ZIP in its attachment part."""
    mail = corpus_mail(OUTLOOK_MAIL)
    head, rest = mail.raw.split(b"Content-Disposition: attachment;", 1)
    disposition, _old_body = rest.split(b"\r\n\r\n", 1)
    boundary = mail.raw.rsplit(b"\r\n------=_NextPart_000_", 1)[1]
    encoded = base64.encodebytes(zip_bytes).replace(b"\n", b"\r\n")
    raw = (head + b"Content-Disposition: attachment;" + disposition + b"\r\n\r\n" + encoded
           + b"\r\n------=_NextPart_000_" + boundary)
    return Corpus(raw, mail.side)


# -- the portal over HTTP ------------------------------------------------------------------


class Visitor:
    """A browser on one link: open the page, then POST the download form."""

    def __init__(self, running, token: str):
        self.base = f"http://127.0.0.1:{running.gateway.portal_port}"
        self.path = f"/d/{token}"

    async def download(self, session: aiohttp.ClientSession) -> tuple[int, bytes, bool]:
        """(status, bytes received, whether the transfer was cut off)."""
        async with session.get(self.base + self.path) as page:
            html = await page.text()
        form = {"csrf": CSRF.search(html).group(1)}
        target = f"{self.base}{self.path}/f/{FILE_ID.search(html).group(1)}"
        received = bytearray()
        async with session.post(target, data=form, headers={"Origin": self.base}) as response:
            try:
                async for piece in response.content.iter_any():
                    received += piece
            except aiohttp.ClientPayloadError:
                return response.status, bytes(received), True
            return response.status, bytes(received), False

    def page_status(self) -> int:
        async def run() -> int:
            async with aiohttp.ClientSession() as session, \
                    session.get(self.base + self.path) as page:
                return page.status

        return asyncio.run(run())

    def fetch(self) -> tuple[int, bytes, bool]:
        async def run() -> tuple[int, bytes, bool]:
            async with aiohttp.ClientSession() as session:
                return await self.download(session)

        return asyncio.run(run())


def metric(running, name: str) -> float:
    import urllib.request

    url = f"http://127.0.0.1:{running.gateway.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def converted(sink, running, mail: Corpus) -> list[str]:
    assert send_corpus(running.port, mail)[0] == 250
    return sorted({t for m in sink.wait_for(len(mail.rcpt_tos)) for t in links_in(m.data)})


def stored_blob(running) -> tuple[Path, bytes]:
    (blob_id,) = running.gateway.blobs.iter_blob_ids()
    path = running.gateway.blobs.path_of(blob_id)
    return path, path.read_bytes()


# -- a flipped byte ---------------------------------------------------------------------------


def sent_at_most(bad_chunk: int) -> int:
    """Plaintext bytes the portal can have sent when chunk `bad_chunk` fails: the batches
    completed before it. A batch is released when its last chunk is, and a chunk is
    released only once the next one has authenticated (so the size and SHA-256 checks
    come before the last chunk). The first batch is read before the headers go out."""
    if bad_chunk == 0:
        return 0
    return (bad_chunk - 1) // CHUNKS_PER_BATCH * CHUNKS_PER_BATCH * CHUNK


STORAGE_REFUSALS = 'ppap_download_refusals_total{reason="storage"}'
# (what is hit, offset into the blob file, index of the chunk that no longer authenticates)
DAMAGE = [
    ("blob header: chunk size", 5, 0),
    ("blob header: nonce", 12, 0),
    ("first chunk", HEADER_SIZE + 100, 0),
    ("first chunk of the second batch", HEADER_SIZE + 4 * SEALED + 1, 4),
    ("middle of a chunk that ends a batch", HEADER_SIZE + 11 * SEALED + CHUNK // 2, 11),
    ("tag of a chunk", HEADER_SIZE + 15 * SEALED - 3, 14),
    ("last chunk", -40, 23),
]


def test_a_flipped_byte_anywhere_stops_the_download_before_that_chunk(
        sink, start_gateway, caplog):
    mark = marker()
    plain = big_encrypted_zip(mark)
    assert len(plain) // CHUNK == 23  # 24 chunks, the last one short
    running = start_gateway()
    token = converted(sink, running, outlook_mail_with(plain))[0]
    path, pristine = stored_blob(running)
    blob_id = path.name
    visitor = Visitor(running, token)
    assert visitor.fetch() == (200, plain, False)

    for what, offset, bad_chunk in DAMAGE:
        damaged = bytearray(pristine)
        damaged[offset] ^= 0x40
        path.write_bytes(bytes(damaged))
        refusals_before = metric(running, STORAGE_REFUSALS)
        caplog.clear()

        status, received, cut_off = visitor.fetch()

        if sent_at_most(bad_chunk) == 0:  # found before the headers: an error page
            assert status == 500 and not cut_off, what
            assert received.startswith(b"<!doctype html>") and plain[:64] not in received
        else:  # the headers were out: the connection is aborted
            assert status == 200 and cut_off, what
            assert received == plain[:len(received)], what  # only authentic bytes
            assert len(received) <= bad_chunk * CHUNK, what  # none of the damaged chunk
            assert len(received) <= sent_at_most(bad_chunk), what
        assert mark not in received, what  # it lies in the last chunk
        assert any(blob_id in r.getMessage() for r in caplog.records
                   if r.levelname == "WARNING"), what
        # After an abort the client may be faster than the server's bookkeeping.
        expected = refusals_before + 1
        assert eventually(lambda n=expected: metric(running, STORAGE_REFUSALS) == n), what
        assert eventually(lambda: running.db.events()[-1].kind in (
            "download.failed", "download.aborted")), what

    path.write_bytes(pristine)
    assert visitor.fetch() == (200, plain, False)


# -- the database dump ------------------------------------------------------------------------


def every_file(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def encodings_of(secret: bytes) -> list[bytes]:
    """The forms a secret could take in a dump or a file: raw, hex, and base64 at each of the
    three alignments (edge characters, which depend on neighbours, left off)."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + secret)
        forms.append(encoded[4 if shift else 0:-4])
    return [f for f in forms if len(f) >= 8]


def found_in(blobs: dict[Path, bytes] | bytes, secret: bytes) -> list[str]:
    haystacks = blobs if isinstance(blobs, dict) else {Path("dump"): blobs}
    return [str(p) for p, data in haystacks.items() for f in encodings_of(secret) if f in data]


def test_a_database_dump_holds_no_usable_token_password_or_file_content(sink, start_gateway):
    running = start_gateway({"policy": {"password": "sender-email"}})
    mail = corpus_mail(OUTLOOK_MAIL)
    tokens = converted(sink, running, mail)
    running.advance(minutes=2)  # the sender's receipt and password mail
    messages = sink.wait_for(4)
    texts = [body_text(m.data) for m in messages if m.rcpt_tos == [mail.mail_from]]
    (manage_token,) = {t for text in texts
                       for t in re.findall(re.escape(PUBLIC_URL) + r"/m/([A-Za-z0-9_-]+)", text)}
    (password,) = {password_in(text) for text in texts if "/m/" not in text}
    attachment = (CORPUS / "files" / "01_aes256_7zip_ja.zip").read_bytes()

    db_path = running.gateway.config.storage.database
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as reader:
        dump = "\n".join(reader.iterdump()).encode()
    reader.close()
    files = every_file(running.gateway.config.storage.data_dir)

    assert b"CREATE TABLE" in dump and len(tokens) == 2
    secrets = [t.encode() for t in (*tokens, manage_token)] + [password.encode()]
    for secret in secrets:
        assert not found_in(dump, secret) and not found_in(files, secret)
    # The link's hash is there (that is how it is found): only the token itself is usable.
    assert hashlib.sha256(tokens[0].encode()).hexdigest().encode() in dump
    for offset in range(0, len(attachment) - 48, 512):
        window = attachment[offset:offset + 48]
        assert not found_in(dump, window) and not found_in(files, window), offset


# -- purge --------------------------------------------------------------------------------------


def test_after_purge_neither_blob_nor_wrapped_key_nor_marker_remains(sink, start_gateway):
    mark = marker()
    plain = big_encrypted_zip(mark, size=3 * CHUNK)
    running = start_gateway()
    token = converted(sink, running, outlook_mail_with(plain))[0]
    assert Visitor(running, token).fetch() == (200, plain, False)
    (row,) = running.db.files_of(running.db.link_by_token_hash(
        hashlib.sha256(token.encode()).hexdigest()).transfer_id)
    data_dir = running.gateway.config.storage.data_dir
    # As SQLite's auto-checkpoint does in time: the row leaves the WAL for the main file,
    # where only secure_delete keeps a deleted row's bytes from staying in a free block.
    running.db.checkpoint()
    before = every_file(data_dir)
    # The search can find what it looks for: the id names the blob file, the key is in the DB.
    database = str(running.gateway.config.storage.database)
    assert any(row.blob_id in str(p) for p in before)
    assert found_in(before, row.wrapped_key) == [database]
    assert database in found_in(before, row.blob_id.encode())
    assert not found_in(before, mark)  # encrypted from the start

    running.clock.advance(days=7, seconds=1)
    assert running.call(running.gateway.purge_now()).transfers_purged == 1
    after = every_file(data_dir)

    assert not running.gateway.blobs.exists(row.blob_id)
    assert not any(row.blob_id in str(p) for p in after)
    for secret in (mark, row.wrapped_key, row.blob_id.encode()):
        assert not found_in(after, secret), secret
    assert Visitor(running, token).page_status() == 410
