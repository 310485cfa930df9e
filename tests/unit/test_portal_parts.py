"""The portal's parts on their own: names and headers, tokens and cookies, client address,
language choice, the password guard in the store, and piecewise ZIP building."""

from __future__ import annotations

import email.message
import email.utils
import io
import ipaddress
import threading
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.store.blobs import BlobIntegrityError, BlobStore
from gateway.store.db import Database
from gateway.web.download import (
    ZipSource,
    ascii_fallback,
    content_disposition,
    download_name,
    verified_chunks,
    zip_member_names,
)
from gateway.web.i18n import MESSAGES, choose_locale, from_accept_language
from gateway.web.security import (
    client_ip,
    cross_site,
    csrf_problem,
    make_csrf_token,
    make_session,
    origin_of,
    session_valid,
)

SECRET = b"\x42" * 32
NOW = datetime(2026, 11, 26, 0, 12, 40, tzinfo=timezone.utc)
MASTER_KEY = bytes(range(32))


def parsed_name(header: str) -> str:
    message = email.message.Message()
    message["Content-Disposition"] = header
    values = [v for k, v in message.get_params(header="content-disposition") if k == "filename"]
    return next(email.utils.collapse_rfc2231_value(v) for v in values if isinstance(v, tuple))


# -- names and Content-Disposition -------------------------------------------------------------


@pytest.mark.parametrize("name, fallback", [
    ("report.pdf", "report.pdf"),
    ("見積書.zip", "_.zip"),
    ("資料 2026年度.xlsx", "_ 2026_.xlsx"),
    ('say "hi" \\ bye.txt', 'say \\"hi\\" \\\\ bye.txt'),
    ("全部日本語", "download"),
    ("line\r\nX-Injected: 1.txt", "line_X-Injected: 1.txt"),
])
def test_ascii_fallback_replaces_non_ascii_keeps_extension_and_escapes(name, fallback):
    assert ascii_fallback(name) == fallback


@pytest.mark.parametrize("name", ["見積書一式_2026年11月.zip", "a;b,c=d's \"q\".zip",
                                  "100% 完成 #1 & more+.pdf", "emoji 📎.txt", "tab\tname.zip"])
def test_content_disposition_parses_back_to_the_exact_name(name):
    header = content_disposition(name)
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert parsed_name(header) == name


def test_download_name_drops_bidi_overrides_and_controls():
    assert download_name("invoice\u202egpj.exe") == "invoicegpj.exe"
    assert download_name("a\x00b\x1f\u2028c.zip") == "abc.zip"
    assert download_name("  \u202e ") == "download"


def test_zip_member_names_cannot_escape_the_folder_or_collide():
    names = zip_member_names(["../../etc/passwd", "C:\\Windows\\x.dll", "..", "a.zip",
                              "A.ZIP", "a.zip", "noext", "noext"])
    assert names == [".._.._etc_passwd", "C__Windows_x.dll", "_..", "a.zip", "A (2).ZIP",
                     "a (3).zip", "noext", "noext (2)"]
    assert all("/" not in n and "\\" not in n for n in names)


# -- CSRF tokens and sessions ---------------------------------------------------------------


def test_csrf_token_is_bound_to_link_and_time():
    token = make_csrf_token(SECRET, "link-a", NOW)
    assert csrf_problem(SECRET, "link-a", token, NOW + timedelta(hours=2)) is None
    assert csrf_problem(SECRET, "link-b", token, NOW) == "csrf_invalid"
    assert csrf_problem(b"\x43" * 32, "link-a", token, NOW) == "csrf_invalid"
    assert csrf_problem(SECRET, "link-a", token, NOW + timedelta(hours=2, seconds=1)) \
        == "csrf_expired"
    assert csrf_problem(SECRET, "link-a", token, NOW - timedelta(minutes=5)) == "csrf_expired"
    stamp, mac = token.split(".")
    assert csrf_problem(SECRET, "link-a", f"{int(stamp) + 60}.{mac}", NOW) == "csrf_invalid"


@pytest.mark.parametrize("garbage", ["", ".", "abc", "1.2", "999999999999." + "A" * 43,
                                     "-1." + "A" * 43, "1" * 400, "１２３." + "A" * 43])
def test_malformed_csrf_tokens_are_refused_without_error(garbage):
    assert csrf_problem(SECRET, "link-a", garbage, NOW) in ("csrf_missing", "csrf_invalid")


def test_session_is_valid_until_its_expiry_for_its_link_only():
    value = make_session(SECRET, "link-a", NOW + timedelta(minutes=30))
    assert session_valid(SECRET, "link-a", value, NOW + timedelta(minutes=29))
    assert not session_valid(SECRET, "link-a", value, NOW + timedelta(minutes=30))
    assert not session_valid(SECRET, "link-b", value, NOW)
    # A CSRF token (same shape, other label) is not a session.
    assert not session_valid(SECRET, "link-a", make_csrf_token(SECRET, "link-a",
                                                               NOW + timedelta(days=1)), NOW)


# -- origin and client address ----------------------------------------------------------------


def test_origin_of_normalises_like_browsers():
    assert origin_of("https://Files.Example.JP:443/d/x") == "https://files.example.jp"
    assert origin_of("http://h.example:8080/") == "http://h.example:8080"
    assert origin_of("http://[::1]:8080/x") == "http://[::1]:8080"
    assert origin_of("javascript:alert(1)") is None
    assert origin_of("http://h:99999/") is None


def test_cross_site_judges_origin_then_referer():
    allowed = {"https://files.example.jp"}
    assert not cross_site("https://files.example.jp", None, allowed)
    assert cross_site("https://evil.example", "https://files.example.jp/d/x", allowed)
    assert not cross_site("null", None, allowed)
    assert cross_site(None, "https://evil.example/x", allowed)
    assert cross_site(None, "not a url", allowed)
    assert not cross_site(None, None, allowed)


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),
    ("10.0.0.2", [], "10.0.0.2"),
    ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.2", ["1.1.1.1, 198.51.100.1, 10.0.0.9"], "198.51.100.1"),
    ("10.0.0.2", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),  # two header lines
    ("10.0.0.2", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),
    ("10.0.0.2", ["198.51.100.1:4711"], "198.51.100.1"),
    ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("fd00::1", ["2001:db8::5"], "2001:db8::5"),
    ("10.0.0.2", ["1.1.1.1, <script>"], "10.0.0.2"),
    ("10.0.0.2", ["x" * 5000 + ", 198.51.100.1"], "198.51.100.1"),
    (None, ["198.51.100.1"], ""),
])
def test_client_ip_takes_the_rightmost_untrusted_forwarded_address(peer, forwarded, expected):
    assert client_ip(peer, forwarded, PROXIES) == expected


# -- language ------------------------------------------------------------------------------


def test_both_locales_have_the_same_messages():
    assert MESSAGES["ja"].keys() == MESSAGES["en"].keys()


@pytest.mark.parametrize("header, expected", [
    ("en", "en"), ("EN-us", "en"), ("ja-JP", "ja"), ("de, en;q=0.5", "en"),
    ("en;q=abc, ja;q=0.1", "ja"), ("en;q=5", None), ("", None), (";;;,,,", None),
    ("x," * 10000 + "en", None),
])
def test_accept_language_parsing_is_lenient_and_bounded(header, expected):
    assert from_accept_language(header) == expected


def test_query_beats_cookie_beats_header():
    assert choose_locale({"lang": "en"}, {"lang": "ja"}, "ja") == "en"
    assert choose_locale({"lang": "xx"}, {"lang": "en"}, "ja") == "en"
    assert choose_locale({}, {"lang": "<b>"}, "en") == "en"
    assert choose_locale({}, {}, "") == "ja"


# -- the password guard in the store -------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "meta.db")
    yield database
    database.close()


def test_guard_counts_attempts_locks_and_reopens(db):
    lockout = timedelta(minutes=15)
    for _ in range(4):
        assert db.reserve_password_attempt("l1", NOW, 5)
        assert db.settle_password_attempt("l1", False, NOW, 5, lockout) is None
    assert db.password_guard("l1").failures == 4
    assert db.reserve_password_attempt("l1", NOW, 5)
    assert db.settle_password_attempt("l1", False, NOW, 5, lockout) == NOW + lockout
    assert not db.reserve_password_attempt("l1", NOW + timedelta(minutes=14), 5)
    assert db.password_guard("l1").locked_until == NOW + lockout
    assert db.reserve_password_attempt("l1", NOW + lockout, 5)
    assert db.password_guard("l1").failures == 1
    assert db.settle_password_attempt("l1", True, NOW + lockout, 5, lockout) is None
    assert db.password_guard("l1").failures == 0
    assert db.password_guard("other").failures == 0


def test_parallel_attempts_never_exceed_the_allowance(db):
    granted = []

    def attempt() -> None:
        granted.append(db.reserve_password_attempt("l1", NOW, 5))

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 5


def test_portal_migration_adds_the_guard_table_and_leaves_links_alone(db):
    tables = {row[0] for row in db._query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "link_password_guard" in tables
    columns = [row[1] for row in db._query("PRAGMA table_info(links)")]
    assert "password_failures" not in columns


# -- building pieces ------------------------------------------------------------------------


def _store(tmp_path: Path, data: bytes, chunk: int = 4096):
    blobs = BlobStore(tmp_path / "blobs", MASTER_KEY, chunk, fsync=lambda fd: None)
    info = blobs.write([data])
    return blobs, info


class _Row:
    def __init__(self, info, name: str = "f.bin", sha256: str | None = None, size=None):
        self.id, self.display_name = info.blob_id[:8], name
        self.blob_id, self.wrapped_key = info.blob_id, info.wrapped_key
        self.size = info.size if size is None else size
        self.sha256 = sha256 or info.sha256


def test_verified_chunks_withholds_the_last_chunk_when_the_record_disagrees(tmp_path):
    data = bytes(range(256)) * 64  # 16 KiB: four 4 KiB chunks
    blobs, info = _store(tmp_path, data)
    assert b"".join(verified_chunks(blobs, _Row(info))) == data
    given = []
    with pytest.raises(BlobIntegrityError):
        given.extend(verified_chunks(blobs, _Row(info, sha256="00" * 32)))
    assert b"".join(given) == data[:-4096]
    with pytest.raises(BlobIntegrityError):
        list(verified_chunks(blobs, _Row(info, size=len(data) - 1)))


def test_zip_source_builds_a_valid_archive_piece_by_piece_and_closes_cleanly(tmp_path):
    blobs = BlobStore(tmp_path / "blobs", MASTER_KEY, 4096, fsync=lambda fd: None)
    contents = [b"a" * 100_000, b"", b"\x00\xff" * 5000]
    rows = [_Row(blobs.write([c]), name) for c, name in zip(contents, ["一.txt", "二", "3.bin"])]
    source = ZipSource(blobs, rows, NOW)  # type: ignore[arg-type]
    pieces = []
    while (piece := source.next_piece()) is not None:
        pieces.append(piece)
    assert max(len(p) for p in pieces) < 200_000
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
        assert [archive.read(n) for n in ("一.txt", "二", "3.bin")] == contents
    # Closing one half-way through leaves nothing for the garbage collector to complain about.
    half = ZipSource(blobs, rows, NOW)  # type: ignore[arg-type]
    half.next_piece()
    half.close()
    assert half.next_piece() is None
