"""attachment_filename and display_safe on names as real clients (and hostile senders) write them."""

from __future__ import annotations

import base64
import random
import time
import unicodedata
from email.message import Message
from pathlib import Path

import pytest

from gateway.filenames import (
    attachment_filename,
    decode_bytes,
    decode_encoded_words,
    display_safe,
    has_filename_parameter,
)
from gateway.mime import parse_message

CORPUS_MAIL = Path(__file__).resolve().parents[1] / "corpus" / "mail"


def part_with_headers(headers: bytes) -> Message:
    """A one-part message carrying the given raw header lines (CRLF-terminated)."""
    return parse_message(headers + b"Content-Transfer-Encoding: base64\r\n\r\nUEsDBA==\r\n")


def encoded_word(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def attachment_part(eml: str) -> Message:
    """Section 2 of a corpus mail: where its sidecar says the attachment is."""
    message = parse_message((CORPUS_MAIL / eml).read_bytes())
    return message.get_payload()[1]


def test_outlook_iso_2022_jp_encoded_word_in_quotes_decodes() -> None:
    name = attachment_filename(attachment_part("01_outlook_jis_aes256.eml"))
    assert name == "見積書一式_2026年11月.zip"


def test_thunderbird_rfc2231_continuations_reassemble() -> None:
    name = attachment_filename(attachment_part("02_thunderbird_rfc2231_longname.eml"))
    assert name == "【機密】令和8年度_基幹システム改修_仕様書一式_企画課.zip"


@pytest.mark.parametrize("charset", ["shift_jis", "utf-8", "iso-2022-jp"])
def test_encoded_word_inside_quotes_decodes_in_each_japanese_charset(charset: str) -> None:
    word = encoded_word("議事録_第2回.pdf", charset)
    part = part_with_headers(f'Content-Disposition: attachment; filename="{word}"\r\n'.encode())
    assert attachment_filename(part) == "議事録_第2回.pdf"


def test_shift_jis_label_decodes_windows_extensions_as_cp932() -> None:
    word = f"=?Shift_JIS?B?{base64.b64encode('資料①㈱.pdf'.encode('cp932')).decode()}?="
    part = part_with_headers(f'Content-Disposition: attachment; filename="{word}"\r\n'.encode())
    assert attachment_filename(part) == "資料①㈱.pdf"


def test_iso_2022_jp_with_nec_row_13_characters_decodes() -> None:
    jis = b"\x1b$B;qNA\x1b(B\x1b$B-!\x1b(B.pdf"  # 資料 then NEC row 13 "①"
    assert decode_bytes(jis, "ISO-2022-JP") == "資料①.pdf"


def test_iso_2022_jp_with_half_width_katakana_decodes() -> None:
    assert decode_bytes(b"\x1b(I6=\x1b(B.pdf", "iso-2022-jp") == "\uff76\uff7d.pdf"  # ｶｽ.pdf


def test_encoded_word_split_inside_a_character_joins_before_decoding() -> None:
    raw = "報告.txt".encode()
    first, second = base64.b64encode(raw[:2]).decode(), base64.b64encode(raw[2:]).decode()
    assert decode_encoded_words(f"=?UTF-8?B?{first}?= =?UTF-8?B?{second}?=") == "報告.txt"


def test_q_encoded_word_decodes_underscores_as_spaces() -> None:
    assert decode_encoded_words("=?utf-8?Q?my_report=E3=81=82.pdf?=") == "my reportあ.pdf"


def test_rfc2231_with_language_decodes() -> None:
    part = part_with_headers(b"Content-Disposition: inline; filename*=UTF-8'ja'%E8%A6%8B%E7%A9%8D.pdf\r\n")
    assert attachment_filename(part) == "見積.pdf"


def test_rfc2231_filename_wins_over_plain_filename() -> None:
    part = part_with_headers(
        b'Content-Disposition: attachment; filename="fallback.pdf"; filename*=UTF-8\'\'%E8%A6%8B.pdf\r\n'
    )
    assert attachment_filename(part) == "見.pdf"


def test_content_type_name_is_used_without_disposition_filename() -> None:
    word = encoded_word("名簿.csv", "iso-2022-jp")
    part = part_with_headers(f'Content-Type: text/csv; name="{word}"\r\n'.encode())
    assert attachment_filename(part) == "名簿.csv"


def test_part_without_any_name_has_empty_filename() -> None:
    part = part_with_headers(b"Content-Type: application/octet-stream\r\n")
    assert attachment_filename(part) == ""
    assert not has_filename_parameter(part)


def test_empty_name_parameter_still_counts_as_a_filename_parameter() -> None:
    assert has_filename_parameter(part_with_headers(b'Content-Type: text/plain; name=""\r\n'))


@pytest.mark.parametrize("encoding", ["utf-8", "cp932"])
def test_raw_8bit_filename_decodes_as_utf8_or_cp932(encoding: str) -> None:
    header = b'Content-Disposition: attachment; filename="%s"\r\n' % "会議資料.zip".encode(encoding)
    assert attachment_filename(part_with_headers(header)) == "会議資料.zip"


def test_raw_iso_2022_jp_in_a_header_decodes() -> None:
    header = b'Content-Disposition: attachment; filename="%s"\r\n' % "資料.pdf".encode("iso-2022-jp")
    assert attachment_filename(part_with_headers(header)) == "資料.pdf"


def test_unknown_charsets_fall_back_without_raising() -> None:
    rfc2231 = part_with_headers(b"Content-Disposition: inline; filename*=x-klingon''%E8%A6%8B.pdf\r\n")
    rfc2047 = part_with_headers(b'Content-Disposition: inline; filename="=?x-klingon?B?6KaL?=.pdf"\r\n')
    non_text_codec = part_with_headers(b'Content-Disposition: inline; filename="=?zlib?B?6KaL?=.pdf"\r\n')
    assert attachment_filename(rfc2231) == "見.pdf"
    assert attachment_filename(rfc2047) == "見.pdf"
    assert attachment_filename(non_text_codec) == "見.pdf"


@pytest.mark.parametrize(
    "header",
    [
        b'Content-Disposition: attachment; filename="=?utf-8?B?!!!?="\r\n',
        b'Content-Disposition: attachment; filename="=?utf-8?B?6?="\r\n',
        b"Content-Disposition: attachment; filename*0*=utf-8''%E8; filename*2=x; filename*=bad\r\n",
        b"Content-Disposition: attachment; filename*='''\r\n",
        b"Content-Disposition: attachment; filename*=utf-8''%ZZ%\r\n",
        b'Content-Disposition: attachment; filename="\xff\xfe\x00\x82"\r\n',
        b"Content-Disposition: ;;;=;=\"\r\n",
        b'Content-Type: ; name="=?\x00?Q?=ZZ?="\r\n',
        b"Content-Disposition: attachment; filename*=a\x00b''x\r\n",
    ],
)
def test_broken_filename_headers_give_a_string_without_raising(header: bytes) -> None:
    assert isinstance(attachment_filename(part_with_headers(header)), str)


def test_rfc2231_mix_that_trips_compat32_still_counts_as_a_filename_parameter() -> None:
    # email.utils.decode_params raises TypeError on "filename*0*=" next to "filename*="
    part = part_with_headers(b"Content-Disposition: inline; filename*0*=utf-8''a; filename*=b\r\n")
    assert has_filename_parameter(part)
    assert attachment_filename(part) == ""


def test_random_parameter_soup_never_raises() -> None:
    tokens = b"""filename filename* filename*0* filename*1 name = ; " ' '' %E8 \\ =?utf-8?B?6KaL?= =? ?= ?Q?
        * \x00 \xe8\xa6 \x1b$B \x82""".split() + [b" ", b"\r\n "]
    rng = random.Random(11)
    for _ in range(3000):
        soup = b"".join(rng.choice(tokens) for _ in range(rng.randint(1, 14)))
        part = part_with_headers(b"Content-Disposition: attachment; " + soup + b"\r\n")
        assert isinstance(attachment_filename(part), str)
        assert isinstance(has_filename_parameter(part), bool)


def test_header_full_of_quoted_semicolons_is_decoded_quickly() -> None:
    part = part_with_headers(b'Content-Disposition: attachment; filename="' + b";" * 100_000 + b'"\r\n')
    started = time.perf_counter()
    attachment_filename(part)
    assert time.perf_counter() - started < 60  # hang guard, not a speed target


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report\r\n.pdf", "report.pdf"),
        ("re\x00port\x07.pdf\x7f", "report.pdf"),
        ("invoice_\u202egpj.exe", "invoice_gpj.exe"),
        ("\u2066a\u2069\u200eb\u200f.txt", "ab.txt"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\evil.bat", "evil.bat"),
        ("...hidden.txt", "hidden.txt"),
        ("  . spaced.txt  ", "spaced.txt"),
        ("line\u2028break.txt", "linebreak.txt"),
        ("lone\udcff.txt", "lone\ufffd.txt"),
        ("", ""),
        ("..", ""),
        ("日本語.zip", "日本語.zip"),
    ],
)
def test_display_safe_removes_what_could_mislead_or_break_display(name: str, safe: str) -> None:
    assert display_safe(name) == safe


def test_display_safe_normalises_to_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "ガイド.pdf")
    assert decomposed != "ガイド.pdf"
    assert display_safe(decomposed) == "ガイド.pdf"


def test_display_safe_cuts_long_names_keeping_the_extension() -> None:
    safe = display_safe("長" * 1000 + ".zip")
    assert len(safe) == 200
    assert safe == "長" * 196 + ".zip"


def test_display_safe_cuts_names_without_extension_at_max_length() -> None:
    assert display_safe("a" * 1000, max_length=50) == "a" * 50


def test_hostile_filename_in_a_header_comes_out_display_safe() -> None:
    word = encoded_word("../..\\x\r\n\u202e.zip", "utf-8")
    part = part_with_headers(f'Content-Disposition: attachment; filename="{word}"\r\n'.encode())
    assert attachment_filename(part) == "x.zip"
