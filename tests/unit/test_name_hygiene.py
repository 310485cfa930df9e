"""Hostile attachment names and subjects, however encoded, come out of every stage that shows
them (filename decoding, ZIP member names, the notice, log lines) without anything that could
break a line, forge a header or reorder text."""

from __future__ import annotations

import base64
import json
import logging
import struct
import unicodedata
import urllib.parse
import zlib
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from gateway.config import BUNDLED_TEMPLATES
from gateway.containers.zipinspect import inspect_zip
from gateway.filenames import attachment_filename, display_safe
from gateway.log import EscapingFormatter, MessageLogger, escape_line, format_fields
from gateway.mime import parse_message
from gateway.model import Envelope
from gateway.pipeline.notice import Notice, NoticeFile, make_template_env, render_notice
from gateway.presentation import display_name
from gateway.unlock.extract import ExtractLimits, extract_members

TEMPLATES = BUNDLED_TEMPLATES  # gateway/templates/, shipped inside the package
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# name as the sender means it → what any display of it must be
HOSTILE = {
    "crlf": ("a\r\nX-Injected: yes.zip", "aX-Injected: yes.zip"),
    "lf-only": ("b\nX-Injected: yes.zip", "bX-Injected: yes.zip"),
    "nul": ("c\x00d.zip", "cd.zip"),
    "rlo": ("invoice\u202egpj.zip", "invoicegpj.zip"),
    "isolates": ("\u2066e\u2067f\u2068g\u2069.zip", "efg.zip"),
    "marks": ("\u200eh\u200f.zip", "h.zip"),
    "c0": ("\x01\x1b[31mred\x07.zip", "[31mred.zip"),
    "c1": ("\x85\x9bi\x9c.zip", "i.zip"),
    "line-separators": ("j\u2028k\u2029.zip", "jk.zip"),
    "japanese-rlo": ("見積\u202e書.zip", "見積書.zip"),
}


def forbidden(text: str) -> set[str]:
    """Characters that must never reach a header, a log line or the HTML."""
    return {
        ch for ch in text
        if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI
    }


def rfc2047(name: str) -> bytes:
    word = base64.b64encode(name.encode()).decode()
    return f'Content-Disposition: attachment; filename="=?UTF-8?B?{word}?="\r\n'.encode()


def rfc2047_q(name: str) -> bytes:
    encoded = "".join(ch if ch.isascii() and ch.isalnum() else
                      "".join(f"={b:02X}" for b in ch.encode()) for ch in name)
    return f'Content-Disposition: attachment; filename="=?UTF-8?Q?{encoded}?="\r\n'.encode()


def rfc2231(name: str) -> bytes:
    quoted = urllib.parse.quote(name.encode(), safe="")
    return f"Content-Disposition: attachment; filename*=UTF-8''{quoted}\r\n".encode()


def raw_8bit(name: str, charset: str = "utf-8") -> bytes:
    return b'Content-Disposition: attachment; filename="' + name.encode(charset) + b'"\r\n'


def part(header: bytes):
    return parse_message(
        b"Content-Type: application/zip\r\n" + header
        + b"Content-Transfer-Encoding: base64\r\n\r\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\r\n"
    )


ENCODINGS = {"rfc2047-b": rfc2047, "rfc2047-q": rfc2047_q, "rfc2231": rfc2231}


@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
def test_encoded_hostile_filenames_decode_to_a_clean_name(case: tuple[str, str], encode) -> None:
    name, shown = case
    decoded = attachment_filename(part(encode(name)))
    assert decoded == shown
    assert not forbidden(decoded)


@pytest.mark.parametrize("case", [c for k, c in HOSTILE.items() if "lf" not in k],
                         ids=[k for k in HOSTILE if "lf" not in k])
def test_raw_8bit_hostile_filenames_decode_to_a_clean_name(case: tuple[str, str]) -> None:
    name, shown = case
    assert attachment_filename(part(raw_8bit(name))) == shown


@pytest.mark.parametrize("charset", ["utf-8", "cp932"])
def test_raw_8bit_japanese_names_are_recovered_utf8_first_then_cp932(charset: str) -> None:
    name = "【至急】見積書①_髙橋.zip"  # ① and 髙 exist only in CP932, not in Shift_JIS
    assert attachment_filename(part(raw_8bit(name, charset))) == name


def test_names_valid_in_both_utf8_and_cp932_read_as_utf8() -> None:
    assert attachment_filename(part(raw_8bit("résumé.zip"))) == "résumé.zip"


@pytest.mark.parametrize("encode", [*ENCODINGS.values(), raw_8bit], ids=[*ENCODINGS, "raw"])
def test_over_long_names_are_cut_keeping_the_extension(encode) -> None:
    name = "長" * 1200 + ".zip"
    decoded = attachment_filename(part(encode(name)))
    assert len(decoded) == 200 and decoded.endswith("長.zip")


def test_a_path_in_a_filename_keeps_only_its_last_component() -> None:
    for name in ("../../../../tmp/pwned.zip", "C:\\Windows\\pwned.zip", "/etc/pwned.zip"):
        assert attachment_filename(part(rfc2231(name))) == "pwned.zip"


# --- ZIP member names ------------------------------------------------------------------------


def zip_with_names(names: list[bytes], utf8_flag: bool = False) -> bytes:
    body, directory = bytearray(), bytearray()
    flags = 0x0800 if utf8_flag else 0
    for name in names:
        offset = len(body)
        crc = zlib.crc32(b"x")
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, 0, 0, 0x21, crc, 1, 1,
                            len(name), 0) + name + b"x"
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, 0, 0, 0x21, crc,
                                 1, 1, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(names), len(names), len(directory),
                      len(body), 0)
    return bytes(body + directory + end)


def test_cp932_member_names_are_recovered_and_cleaned() -> None:
    names = ["見積書①.xlsx", "報告\x1b書.pdf", "表\x7f.csv"]
    data = zip_with_names([name.encode("cp932") for name in names])
    assert [m.name for m in inspect_zip(data).members] == ["見積書①.xlsx", "報告書.pdf", "表.csv"]
    shown = [f.display_name for f in extract_members(data, "", ExtractLimits()).files]
    assert shown == ["見積書①.xlsx", "報告書.pdf", "表.csv"]


def test_utf8_member_names_with_hostile_characters_are_cleaned() -> None:
    names = [name for name, _ in HOSTILE.values()]
    data = zip_with_names([name.encode() for name in names], utf8_flag=True)
    report_names = [m.name for m in inspect_zip(data).members]
    shown = [f.display_name for f in extract_members(data, "", ExtractLimits()).files]
    assert shown == [display for _, display in HOSTILE.values()]
    assert not forbidden("".join(report_names + shown))


# --- the notice ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env():
    return make_template_env(TEMPLATES)


@pytest.mark.parametrize("locale", ["ja", "en"])
def test_notice_shows_hostile_names_clean_in_text_and_html(env, locale: str) -> None:
    names = [name for name, _ in HOSTILE.values()] + ["<script>alert(1)</script>.zip", "x" * 1000]
    notice = Notice(
        locale=locale,
        files=tuple(NoticeFile(name, 100) for name in names),
        url="https://files.example.jp/d/abc",
        expires_at=datetime(2026, 12, 3, 8, 0, tzinfo=timezone(timedelta(hours=9))),
        password="none",
    )
    text, html = render_notice(env, notice)
    for rendered in (text, html):
        assert not forbidden(rendered.replace("\n", ""))
        assert "\r" not in rendered
        assert not any(line.startswith("X-Injected") for line in rendered.split("\n"))
        assert "x" * 201 not in rendered
    assert "<script>" not in html and "&lt;script&gt;" in html
    for _, shown in HOSTILE.values():
        assert shown.replace('"', "&#34;") in html or shown in text


def test_display_name_turns_a_lone_surrogate_into_a_replacement_character() -> None:
    shown = display_name("bad\udce9name.zip")
    assert shown == "bad\ufffdname.zip"
    shown.encode("utf-8")  # an HTML page or a mail body can carry it


def test_display_safe_and_display_name_agree_on_what_is_dropped() -> None:
    for name, shown in HOSTILE.values():
        assert display_safe(name) == display_name(name) == shown


# --- log lines -------------------------------------------------------------------------------


def outcome(notes: list[str]) -> SimpleNamespace:
    return SimpleNamespace(department="総務課\u202e", internal=0, external=1, decision="convert",
                           converted_files=1, transfer_id="t1", notes=notes)


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_message_log_line_is_one_line_with_every_hostile_character_escaped(fmt: str) -> None:
    records: list[logging.LogRecord] = []
    logger = logging.getLogger(f"test.hygiene.{fmt}")
    logger.propagate = False
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    envelope = Envelope("a\r\nforged=1@example.jp", ("b@example.com",), peer="127.0.0.1")
    notes = [f"double-zip: {name}" for name, _ in HOSTILE.values()] + ["\udce9"]
    fields = MessageLogger(fmt, logger).message("q1", envelope, outcome(notes), "250 ok", 0.1)
    (record,) = records
    line = record.getMessage()
    assert not forbidden(line) and "\n" not in line and "\r" not in line
    if fmt == "json":  # escaping is lossless: the line parses back to the values
        assert json.loads(line)["from"] == fields["from"]
        assert json.loads(line)["department"] == "総務課\u202e"
        assert "総務課" in line  # Japanese stays readable
    else:
        assert " forged=1" not in line


def test_every_log_line_is_escaped_by_the_formatter() -> None:
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1,
                               "cannot store %s", ("evil\r\n2026 FAKE LINE\u202e\x1b[2J",), None)
    line = EscapingFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING cannot store evil\\u000d\\u000a2026 FAKE LINE\\u202e\\u001b[2J"


def test_escape_line_leaves_ordinary_text_alone() -> None:
    text = "見積書 (2).zip — tab-free, 100% normal"
    assert escape_line(text) == text
    assert format_fields({"file": text}, "json") == json.dumps({"file": text}, ensure_ascii=False)
