"""Downloads through the portal: exact bytes, names, ZIP of all, CSRF, counting, integrity,
client address behind proxies, flat memory for a large file, and a relayed mail's own link."""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import hashlib
import io
import ipaddress
import os
import re
import tracemalloc
import zipfile
from email import message_from_bytes, policy
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import BUNDLED_TEMPLATES, PortalSettings
from gateway.store.passwords import hash_token
from gateway.web import build_portal_app
from gateway.web.download import FILE_BATCH_SIZE
from tests.support.portal_harness import (
    CSRF_FIELD,
    JA_ZIP,
    RECIPIENT,
    SECRET,
    TOKYO,
    PortalHarness,
    corpus_file,
    csrf_of,
    open_harness,
)
from tests.support.running import (
    PUBLIC_URL,
    RunningGateway,
    corpus_mail,
    make_config,
    send_corpus,
)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[PortalHarness]:
    yield from open_harness(tmp_path)


SAME_ORIGIN = {"Origin": PUBLIC_URL}


def filename_from(header: str) -> tuple[str | None, str | None]:
    """(filename*, filename) as RFC 6266 readers see them; they prefer the first."""
    message = email.message.Message()
    message["Content-Disposition"] = header
    values = [v for k, v in message.get_params(header="content-disposition") if k == "filename"]
    extended = [email.utils.collapse_rfc2231_value(v) for v in values if isinstance(v, tuple)]
    plain = [v for v in values if isinstance(v, str)]
    return (extended[0] if extended else None), (plain[0] if plain else None)


async def post(client, path: str, csrf: str | None, headers: dict | None = None):
    data = {} if csrf is None else {"csrf": csrf}
    return await client.post(path, data=data, headers={**SAME_ORIGIN, **(headers or {})})


async def download(client, issued, file_id: str | None = None, headers: dict | None = None):
    csrf = await csrf_of(client, issued)
    target = f"{issued.path}/all" if file_id == "all" else \
        f"{issued.path}/f/{file_id or issued.files[0].id}"
    response = await post(client, target, csrf, headers)
    return response, await response.read()


# -- one file ------------------------------------------------------------------------------


@pytest.mark.parametrize("corpus, name", [
    ("01_aes256_7zip_ja.zip", JA_ZIP),
    ("02_zipcrypto_infozip_ascii.zip", "report_2026.zip"),
    ("12a_plain.pdf", "仕様書 \"最終版\" \\ 2026.pdf"),
])
def test_download_is_the_original_attachment_under_its_exact_name(harness, corpus, name):
    data, sidecar_sha = corpus_file(corpus)
    issued = harness.add_one(name=name, data=data)

    response, body = harness.run(lambda c: download(c, issued))

    assert response.status == 200
    assert hashlib.sha256(body).hexdigest() == sidecar_sha
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    header = response.headers["Content-Disposition"]
    assert header.startswith('attachment; filename="')
    exact, fallback = filename_from(header)
    assert exact == name
    assert fallback.isascii() and fallback.endswith(name.rsplit(".", 1)[1])
    if name.isascii():
        assert fallback == name


def test_download_counts_once_and_is_audited_with_client_details(harness):
    issued = harness.add_one()

    response, _ = harness.run(lambda c: download(c, issued, headers={"User-Agent": "Browser/1"}))

    assert response.status == 200
    assert harness.link(issued).download_count == 1
    (event,) = harness.events()
    assert event.kind == "download" and event.link_id == issued.link_id
    assert event.recipient == RECIPIENT and event.transfer_id == issued.transfer_id
    assert event.detail == {"client_ip": "127.0.0.1", "user_agent": "Browser/1",
                            "file_id": issued.files[0].id, "outcome": "served"}
    assert harness.hook_calls == [("download", {})]


def test_download_limit_is_enforced_per_post(harness):
    issued = harness.add_one(max_downloads=2)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        target = f"{issued.path}/f/{issued.files[0].id}"
        return [(await post(client, target, csrf)).status for _ in range(3)]

    assert harness.run(scenario) == [200, 200, 410]
    assert harness.link(issued).download_count == 2
    assert [e.kind for e in harness.events()] == ["download", "download", "download.refused"]


def test_unknown_file_id_is_404_and_counts_nothing(harness):
    issued = harness.add_one()

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        return (await post(client, f"{issued.path}/f/{'0' * 32}", csrf)).status

    assert harness.run(scenario) == 404
    assert harness.link(issued).download_count == 0
    assert harness.events()[0].detail["reason"] == "no_such_file"


# -- all files as one ZIP ---------------------------------------------------------------------


def test_download_all_is_a_standard_zip_of_the_exact_files_with_utf8_names(harness):
    names_and_data = [
        (JA_ZIP, corpus_file("01_aes256_7zip_ja.zip")[0]),
        ("plain.zip", corpus_file("04_unencrypted_7zip.zip")[0]),
        ("資料.pdf", corpus_file("12a_plain.pdf")[0]),
        ("資料.PDF", b""),  # same name as Windows sees it, and empty
        ("../../etc/passwd", b"not a path"),
    ]
    issued = harness.add_transfer(names_and_data)[0]

    response, body = harness.run(lambda c: download(c, issued, "all"))

    assert response.status == 200
    assert filename_from(response.headers["Content-Disposition"])[0] == "files-20261126.zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == [
            JA_ZIP, "plain.zip", "資料.pdf", "資料 (2).PDF", ".._.._etc_passwd"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert infos[0].flag_bits & 0x800  # UTF-8 name flag
        assert [archive.read(i) for i in infos] == [d for _, d in names_and_data]
        assert infos[0].date_time == (2026, 11, 26, 9, 12, 40)  # created, Tokyo time
    assert harness.link(issued).download_count == 1
    assert harness.events()[0].detail["file_id"] == "all"


def test_download_all_is_not_offered_for_a_single_file(harness):
    issued = harness.add_one()
    response, _ = harness.run(lambda c: download(c, issued, "all"))
    assert response.status == 404 and harness.link(issued).download_count == 0


# -- where a POST comes from ------------------------------------------------------------------


@pytest.mark.parametrize("token_kind, reason", [
    ("missing", "csrf_missing"), ("wrong", "csrf_invalid"), ("expired", "csrf_expired"),
    ("other_link", "csrf_invalid"),
])
def test_download_without_a_good_csrf_token_is_403(harness, token_kind, reason):
    issued, other = harness.add_one(), harness.add_one()

    async def scenario(client):
        csrf = await csrf_of(client, other if token_kind == "other_link" else issued)
        if token_kind == "expired":
            harness.clock.advance(hours=2, seconds=1)
        token = {"missing": None, "wrong": csrf[:-2] + "AA"}.get(token_kind, csrf)
        response = await post(client, f"{issued.path}/f/{issued.files[0].id}", token)
        return response.status, await response.text()

    status, body = harness.run(scenario)

    assert status == 403 and "ページを開き直して" in body
    assert harness.link(issued).download_count == 0
    (event,) = harness.events()
    assert event.kind == "download.refused" and event.detail["reason"] == reason


def test_csrf_token_is_still_good_just_before_two_hours(harness):
    issued = harness.add_one()

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        harness.clock.advance(hours=1, minutes=59)
        return (await post(client, f"{issued.path}/f/{issued.files[0].id}", csrf)).status

    assert harness.run(scenario) == 200


@pytest.mark.parametrize("headers, status", [
    ({"Origin": "https://evil.example"}, 403),
    ({"Origin": "https://files.city.example.lg.jp.evil.example"}, 403),
    ({"Origin": "http://files.city.example.lg.jp"}, 403),  # not the scheme we publish
    ({"Origin": "", "Referer": "https://evil.example/page"}, 403),
    ({"Origin": PUBLIC_URL}, 200),
    ({"Origin": "null"}, 200),  # what browsers send for our own no-referrer forms
    ({"Origin": "", "Referer": PUBLIC_URL + "/d/x"}, 200),
    ({"Origin": ""}, 200),
])
def test_cross_site_origin_or_referer_is_refused(harness, headers, status):
    issued = harness.add_one()

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        request_headers = {k: v for k, v in headers.items() if v}
        response = await client.post(f"{issued.path}/f/{issued.files[0].id}",
                                      data={"csrf": csrf}, headers=request_headers)
        await response.read()
        return response.status

    assert harness.run(scenario) == status
    assert harness.link(issued).download_count == (1 if status == 200 else 0)
    if status == 403:
        assert harness.events()[0].detail["reason"] == "cross_site"


def test_the_allowed_origins_come_from_public_url_and_the_listen_address_not_from_host(harness):
    """A forged Host header must not make the attacker's Origin our own: the allow-list is
    public_url plus the address and port the portal listens on, nothing the request says."""
    issued = harness.add_one()
    evil = "evil.example"

    async def scenario(client):
        direct = f"http://127.0.0.1:{client.port}"  # the listen address, opened directly
        attempts = {
            "Origin of a forged Host": {"Host": evil, "Origin": f"http://{evil}"},
            "Referer of a forged Host": {"Host": evil, "Referer": f"http://{evil}/page"},
            "public_url's host over http": {"Host": "files.city.example.lg.jp",
                                            "Origin": "http://files.city.example.lg.jp"},
            "public_url, Host forged": {"Host": evil, "Origin": PUBLIC_URL},
            "the listen address, Host forged": {"Host": evil, "Origin": direct},
            "the listen address": {"Origin": direct},
        }
        statuses = {}
        for name, headers in attempts.items():
            csrf = await csrf_of(client, issued)
            response = await client.post(f"{issued.path}/f/{issued.files[0].id}",
                                         data={"csrf": csrf}, headers=headers)
            await response.read()
            statuses[name] = response.status
        return statuses

    assert harness.run(scenario) == {
        "Origin of a forged Host": 403,
        "Referer of a forged Host": 403,
        "public_url's host over http": 403,
        "public_url, Host forged": 200,
        "the listen address, Host forged": 200,
        "the listen address": 200,
    }
    assert harness.link(issued).download_count == 3
    refused = [e.detail["reason"] for e in harness.events() if e.kind == "download.refused"]
    assert refused == ["cross_site"] * 3


# -- damaged storage ------------------------------------------------------------------------


def _flip_byte(harness, file_row, offset: int) -> None:
    path = harness.blobs.path_of(file_row.blob_id)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


SMALL_CHUNK = 4096
SEALED_CHUNK = SMALL_CHUNK + 16
HEADER = 16
# Chunks handed over per batch: damage must lie past the first batch to be met mid-stream.
BATCH_CHUNKS = FILE_BATCH_SIZE // SMALL_CHUNK


def test_damage_found_before_the_first_byte_gives_a_500_page_and_counts_nothing(tmp_path):
    portal = PortalHarness(tmp_path, chunk_size=SMALL_CHUNK)
    issued = portal.add_one(data=os.urandom(10 * SMALL_CHUNK))
    _flip_byte(portal, issued.files[0], HEADER + 5)

    response, body = portal.run(lambda c: download(c, issued))

    assert response.status == 500 and "エラーが発生しました".encode() in body
    assert response.headers["Content-Type"].startswith("text/html")
    assert portal.link(issued).download_count == 0
    (event,) = portal.events()
    assert event.kind == "download.failed" and event.detail["error"] == "integrity"
    portal.close()


def test_damage_mid_stream_aborts_the_connection_after_only_authentic_bytes(tmp_path):
    portal = PortalHarness(tmp_path, chunk_size=SMALL_CHUNK)
    data = os.urandom(4 * BATCH_CHUNKS * SMALL_CHUNK)
    issued = portal.add_one(data=data)
    _flip_byte(portal, issued.files[0], HEADER + 2 * BATCH_CHUNKS * SEALED_CHUNK + 7)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        response = await post(client, f"{issued.path}/f/{issued.files[0].id}", csrf)
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in response.content.iter_any():
                received += piece
        return response.status, bytes(received)

    status, received = portal.run(scenario)

    assert status == 200  # the headers had gone out
    assert len(received) < 2 * BATCH_CHUNKS * SMALL_CHUNK
    assert received == data[:len(received)]
    assert [e.kind for e in portal.events()] == ["download", "download.aborted"]
    assert portal.events()[1].detail["reason"] == "integrity"
    assert ("download_aborted", {"reason": "integrity"}) in portal.hook_calls
    portal.close()


def test_a_file_whose_bytes_differ_from_the_recorded_sha256_is_never_completed(tmp_path):
    portal = PortalHarness(tmp_path, chunk_size=SMALL_CHUNK)
    data = os.urandom(3 * BATCH_CHUNKS * SMALL_CHUNK)
    issued = portal.add_one(data=data)
    with portal.db.transaction():  # the metadata points at other content than it describes
        portal.db._execute("UPDATE files SET sha256 = ? WHERE id = ?",
                           ("00" * 32, issued.files[0].id))

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        response = await post(client, f"{issued.path}/f/{issued.files[0].id}", csrf)
        try:
            body = await response.read()
        except aiohttp.ClientPayloadError:
            return response.status, None
        return response.status, body

    status, body = portal.run(scenario)

    assert status == 200
    assert body is None or len(body) < len(data)
    assert portal.events()[-1].kind in ("download.aborted", "download.failed")
    portal.close()


def test_zip_of_all_with_a_damaged_later_file_is_cut_off(tmp_path):
    portal = PortalHarness(tmp_path, chunk_size=SMALL_CHUNK)
    first, second = os.urandom(30 * SMALL_CHUNK), os.urandom(30 * SMALL_CHUNK)
    issued = portal.add_transfer([("a.bin", first), ("b.bin", second)])[0]
    _flip_byte(portal, issued.files[1], HEADER + 10 * SEALED_CHUNK)

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        response = await post(client, f"{issued.path}/all", csrf)
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in response.content.iter_any():
                received += piece
        return bytes(received)

    received = portal.run(scenario)

    assert first in received and second[:10 * SMALL_CHUNK] not in received
    assert portal.events()[-1].detail["reason"] == "integrity"
    portal.close()


# -- the client's address ---------------------------------------------------------------------


@pytest.mark.parametrize("trusted, forwarded, expected", [
    ((), "198.51.100.7", "127.0.0.1"),  # peer is no proxy of ours: header ignored
    (("127.0.0.0/8",), "198.51.100.7", "198.51.100.7"),
    (("127.0.0.0/8",), "203.0.113.66, 198.51.100.7", "198.51.100.7"),  # left part is forgeable
    (("127.0.0.0/8", "198.51.100.0/24"), "203.0.113.66, 198.51.100.7", "203.0.113.66"),
    (("127.0.0.0/8",), "not-an-ip", "127.0.0.1"),
])
def test_client_ip_comes_from_x_forwarded_for_only_via_trusted_proxies(
    harness, trusted, forwarded, expected
):
    harness.settings = PortalSettings(
        public_url=PUBLIC_URL, trusted_proxies=tuple(ipaddress.ip_network(n) for n in trusted))
    issued = harness.add_one()

    harness.run(lambda c: download(c, issued, headers={"X-Forwarded-For": forwarded}))

    assert harness.events("download")[0].detail["client_ip"] == expected


# -- memory -------------------------------------------------------------------------------------


def test_streaming_a_50_mb_file_keeps_memory_flat(harness):
    size = 50 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    data_sha = hashlib.sha256(block * 50).hexdigest()
    issued = harness.add_transfer([("big.bin", block * 50)])[0]
    del block

    async def scenario(client):
        csrf = await csrf_of(client, issued)
        digest, total = hashlib.sha256(), 0
        tracemalloc.start()
        try:
            response = await post(client, f"{issued.path}/f/{issued.files[0].id}", csrf)
            async for piece in response.content.iter_chunked(256 * 1024):
                digest.update(piece)
                total += len(piece)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return total, digest.hexdigest(), peak

    total, sha, peak = harness.run(scenario)

    assert total == size and sha == data_sha
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while streaming 50 MiB"


# -- the whole way: relay → mail with a link → portal --------------------------------------------


def test_link_in_a_relayed_corpus_mail_downloads_the_original_attachment(tmp_path):
    mail = corpus_mail("01_outlook_jis_aes256")
    attachment = mail.side["attachments"][0]
    config = make_config(tmp_path, f"outbox:{tmp_path / 'outbox'}")
    with RunningGateway(config) as running:
        assert send_corpus(running.port, mail)[0] == 250
        tokens = []
        for eml in sorted((tmp_path / "outbox").glob("*.eml")):
            message = message_from_bytes(eml.read_bytes(), policy=policy.default)
            text = "".join(p.get_content() for p in message.walk()
                           if p.get_content_type() == "text/plain")
            tokens += re.findall(re.escape(PUBLIC_URL) + r"/d/([A-Za-z0-9_-]{22,})", text)
        assert len(set(tokens)) == len(mail.rcpt_tos)
        token = tokens[0]
        app = build_portal_app(
            settings=config.portal, db=running.db, blobs=running.gateway.blobs,
            templates_dir=BUNDLED_TEMPLATES, timezone=TOKYO, secret=SECRET,
            clock=running.clock)

        async def scenario():
            async with TestClient(TestServer(app), cookie_jar=aiohttp.DummyCookieJar()) as client:
                page = await (await client.get(f"/d/{token}")).text()
                file_id = re.search(r'action="/d/[^"/]+/f/([0-9a-f]+)"', page).group(1)
                response = await post(client, f"/d/{token}/f/{file_id}",
                                      CSRF_FIELD.search(page).group(1))
                return page, response.headers["Content-Disposition"], await response.read()

        page, disposition, body = asyncio.run(scenario())
        link = running.db.link_by_token_hash(hash_token(token))

    assert attachment["filename"] in page and attachment["sha256"] in page
    assert filename_from(disposition)[0] == attachment["filename"]
    assert hashlib.sha256(body).hexdigest() == attachment["sha256"]
    assert link.download_count == 1
