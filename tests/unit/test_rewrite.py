"""Rewriting a message: the ZIP leaves, the notice arrives, everything else stays as it was."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from email.message import Message
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.config import BUNDLED_TEMPLATES
from gateway.errors import RewriteError
from gateway.mime import children, parse_message, part_at, walk_with_paths
from gateway.pipeline.notice import Notice, NoticeFile, make_template_env, render_notice
from gateway.pipeline.rewrite import rewrite_message

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
URL = "https://files.city.example.lg.jp/d/Zk3vQ9xTt2"
ENCRYPTED_ZIP_MAILS = [
    "01_outlook_jis_aes256",
    "02_thunderbird_rfc2231_longname",
    "09a_ppap1_outlook_zip",
    "12_mixed_recipients",
    "27_eicar_in_encrypted_zip",
]
ZIP = (CORPUS / "files" / "10_eicar_zipcrypto.zip").read_bytes()
PDF = (CORPUS / "files" / "12a_plain.pdf").read_bytes()
ENV = make_template_env(BUNDLED_TEMPLATES)


def notice(name: str = "請求書_2026年11月.zip", locale: str = "ja") -> tuple[str, str]:
    expires = datetime(2026, 12, 3, 17, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    files = (NoticeFile(name, 6878),)
    return render_notice(ENV, Notice(locale, files, URL, expires, "recipient-email"))


def corpus_mail(name: str) -> tuple[bytes, dict]:
    sidecar = json.loads((CORPUS / "mail" / f"{name}.json").read_text(encoding="utf-8"))
    return (CORPUS / "mail" / f"{name}.eml").read_bytes(), sidecar


def section_path(section: str) -> tuple[int, ...]:
    """IMAP-style section "2" / "1.2" → our index path (1,) / (0, 1)."""
    return tuple(int(n) - 1 for n in section.split("."))


def crlf(text: str, charset: str = "utf-8") -> bytes:
    return text.replace("\n", "\r\n").encode(charset)


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").rstrip("\n")


def zip_part(name: str = "a.zip") -> str:
    return (
        f'Content-Type: application/zip; name="{name}"\n'
        f'Content-Disposition: attachment; filename="{name}"\n'
        "Content-Transfer-Encoding: base64\n\n"
        f"{b64(ZIP)}\n"
    )


HEADERS = (
    "From: somu@city.example.lg.jp\n"
    "To: tanaka@partner.example.com\n"
    "Subject: =?UTF-8?B?6KaL56mN5pu4?=\n"
    "Date: Thu, 26 Nov 2026 09:12:40 +0900\n"
    "Message-ID: <test-1@city.example.lg.jp>\n"
    "References: <prev-1@partner.example.com>\n"
    "MIME-Version: 1.0\n"
)


ASCII_7BIT = "Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n"
UTF8_8BIT = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n"
JIS_7BIT = 'Content-Type: text/plain; charset="iso-2022-jp"\nContent-Transfer-Encoding: 7bit\n'
HTML_8BIT = "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n"
FORWARDED_HEADERS = "Content-Type: message/rfc822\n\nFrom: kato@example.co.jp\nSubject: fwd\n"
OSEWA_JIS = b"\x1b$B$*@$OC$K$J$j$^$9\x1b(B"  # お世話になります


def mixed(*parts: str, boundary: str = "outer") -> str:
    body = "".join(f"--{boundary}\n{part}" for part in parts)
    return f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n{body}--{boundary}--\n'


def text_and_zip(text_headers: str, body: bytes) -> bytes:
    """A mixed message: one text part (its headers, then raw body bytes) and the ZIP."""
    head = crlf(f'{HEADERS}Content-Type: multipart/mixed; boundary="b"\n\n--b\n{text_headers}\n')
    tail = crlf("\n--b\n" + zip_part() + "--b--\n")
    return head + body + tail


def assert_wire_clean(out: bytes) -> Message:
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", out) is None, "bare CR or LF"
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    reparsed = parse_message(out)
    for _, part in walk_with_paths(reparsed):
        assert not part.defects, part.defects
    return reparsed


def assert_no_zip(out: bytes) -> None:
    assert base64.b64encode(ZIP)[:40] not in out
    for _, part in walk_with_paths(parse_message(out)):
        if not part.is_multipart():
            assert b"PK\x03\x04" not in (part.get_payload(decode=True) or b"")


def body_texts(message: Message) -> dict[str, str]:
    """subtype → strictly decoded text of the top-level text/plain and text/html parts."""
    found = {}
    for _, part in walk_with_paths(message):
        if part.get_content_type() in ("text/plain", "text/html"):
            data = part.get_payload(decode=True)
            found[part.get_content_subtype()] = data.decode(part.get_content_charset())
    return found


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def lf(text: str) -> str:
    return text.replace("\r\n", "\n")


# --- the corpus -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCRYPTED_ZIP_MAILS)
def test_corpus_mail_loses_its_zip_and_gains_the_notice_in_both_bodies(name: str) -> None:
    raw, sidecar = corpus_mail(name)
    attachment = sidecar["attachments"][0]
    zip_bytes = (CORPUS / attachment["corpus_file"]).read_bytes()
    text, html = notice(attachment["filename"])
    out = rewrite_message(raw, [section_path(attachment["mime_section"])], text, html)

    reparsed = assert_wire_clean(out)
    assert base64.b64encode(zip_bytes)[:40] in raw.replace(b"\r\n", b"")
    assert base64.b64encode(zip_bytes)[:40] not in out.replace(b"\r\n", b"")
    for _, part in walk_with_paths(reparsed):
        assert b"PK\x03\x04" not in (part.get_payload(decode=True) or b"") or part.is_multipart()
    bodies = body_texts(reparsed)
    assert set(bodies) == ({"plain"} if name.startswith("02") else {"plain", "html"})
    for decoded in bodies.values():
        assert URL in decoded and attachment["filename"] in decoded
    assert "\ufffd" not in "".join(bodies.values())
    assert header_block(out) == header_block(raw) + b"\r\nX-PPAP-Gateway: converted"


def test_outlook_jis_mail_stays_iso_2022_jp_with_its_bytes_kept_after_the_notice() -> None:
    raw, _ = corpus_mail("01_outlook_jis_aes256")
    text, html = notice()
    out = rewrite_message(raw, [(1,)], text, html)
    before, after = parse_message(raw), parse_message(out)

    for path in ((0, 0), (0, 1)):
        assert part_at(after, path).items() == part_at(before, path).items()  # charset, CTE kept
    plain_before = part_at(before, (0, 0)).get_payload(decode=True)
    plain_after = part_at(after, (0, 0)).get_payload(decode=True)
    assert plain_after.endswith(b"\r\n\r\n" + plain_before)
    assert plain_after.isascii()  # still 7bit
    assert lf(plain_after.decode("iso2022_jp")).startswith(text)

    html_before = lf(part_at(before, (0, 1)).get_payload(decode=True).decode("iso2022_jp"))
    html_after = lf(part_at(after, (0, 1)).get_payload(decode=True).decode("iso2022_jp"))
    body_tag = re.search(r"<body[^>]*>", html_before).group(0)
    assert f"{body_tag}\n{html}" in html_after
    assert html_after.replace(f"{body_tag}\n{html}", body_tag) == html_before
    assert "Content-Transfer-Encoding: quoted-printable" in part_at(after, (0, 1)).as_string()


def test_thunderbird_utf8_mail_stays_utf8_8bit_and_flowed() -> None:
    raw, _ = corpus_mail("02_thunderbird_rfc2231_longname")
    text, html = notice()
    out = rewrite_message(raw, [(1,)], text, html)
    before, after = parse_message(raw).get_payload(0), parse_message(out).get_payload(0)
    assert after.items() == before.items()  # charset=UTF-8; format=flowed, 8bit
    decoded_before = lf(before.get_payload(decode=True).decode("utf-8"))
    assert lf(after.get_payload(decode=True).decode("utf-8")) == text + "\n" + decoded_before
    assert len(children(parse_message(out))) == 1


def test_hostile_file_name_is_escaped_in_the_html_body() -> None:
    raw, _ = corpus_mail("01_outlook_jis_aes256")
    text, html = notice("<script>\"&'.zip")
    bodies = body_texts(parse_message(rewrite_message(raw, [(1,)], text, html)))
    assert "&lt;script&gt;&#34;&amp;&#39;.zip" in bodies["html"]
    assert "<script" not in bodies["html"]
    assert "<script>\"&'.zip" in bodies["plain"]


def test_bare_lf_input_comes_out_crlf_only() -> None:
    raw, _ = corpus_mail("02_thunderbird_rfc2231_longname")
    out = rewrite_message(raw.replace(b"\r\n", b"\n"), [(1,)], *notice())
    assert URL in body_texts(assert_wire_clean(out))["plain"]


# --- untouched parts ---------------------------------------------------------------------


def test_parts_not_touched_serialise_byte_for_byte() -> None:
    pdf_part = (
        'Content-Type: application/pdf; name="minutes.pdf"\n'
        'Content-Disposition: attachment; filename="minutes.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n"
        f"{b64(PDF)}\n"
    )
    forwarded = (
        "Content-Type: message/rfc822\n\n"
        "From: kato@example.co.jp\nSubject: forwarded\nMessage-ID: <fwd@example.co.jp>\n"
        "MIME-Version: 1.0\n"
        + mixed("Content-Type: text/plain\n\ninner body\n", zip_part("in.zip"), boundary="inner")
    )
    plain = ASCII_7BIT + "\nHello\n"
    raw = crlf(HEADERS + mixed(plain, pdf_part, forwarded, zip_part()))
    out = rewrite_message(raw, [(2, 0, 1), (3,)], *notice())

    assert_no_zip(out)
    assert crlf(pdf_part) in out
    after = assert_wire_clean(out)
    assert len(children(after)) == 3
    inner = part_at(after, (2, 0))
    assert inner.items() == part_at(parse_message(raw), (2, 0)).items()
    assert [p.get_payload(decode=True) for p in children(inner)] == [b"inner body"]


# --- charsets and transfer encodings ----------------------------------------------------


def first_part_converted(text_headers: str, body: bytes, name: str = "請求書.zip", locale: str = "ja"):
    """Convert a mixed (text part, ZIP) message; return the text part, its label and the notice."""
    text, html = notice(name, locale)
    raw = text_and_zip(text_headers, body)
    part = assert_wire_clean(rewrite_message(raw, [(1,)], text, html)).get_payload(0)
    label = (part.get_content_charset(), part["Content-Transfer-Encoding"])
    return part, label, text, html


def decoded(part: Message, codec: str = "utf-8") -> str:
    return lf(part.get_payload(decode=True).decode(codec))


def test_us_ascii_body_with_a_japanese_notice_becomes_utf8_base64() -> None:
    part, label, text, _ = first_part_converted(ASCII_7BIT, b"Hello\r\n")
    assert label == ("utf-8", "base64")
    assert part.keys() == ["Content-Type", "Content-Transfer-Encoding"]  # edited in place
    assert decoded(part) == text + "\nHello\n"


def test_english_notice_keeps_a_us_ascii_body_as_it_is_labelled() -> None:
    _, label, _, _ = first_part_converted(ASCII_7BIT, b"Hello\r\n", "report.zip", "en")
    assert label == ("us-ascii", "7bit")


def test_shift_jis_body_with_windows_characters_stays_shift_jis_8bit() -> None:
    body = crlf("①の件、よろしくお願いします。\n", "cp932")
    headers = "Content-Type: text/plain; charset=Shift_JIS\nContent-Transfer-Encoding: 8bit\n"
    part, label, _, _ = first_part_converted(headers, body)
    assert label == ("shift_jis", "8bit")
    assert part.get_payload(decode=True).endswith(b"\r\n\r\n" + body)


def test_iso_2022_jp_body_with_half_width_katakana_stays_iso_2022_jp() -> None:
    body = OSEWA_JIS + b" \x1b(I6E\x1b(B\r\n"  # half-width ｶﾅ, as Outlook writes it
    part, label, _, _ = first_part_converted(JIS_7BIT, body)
    assert label == ("iso-2022-jp", "7bit")
    assert part.get_payload(decode=True).endswith(b"\r\n\r\n" + body)


def test_notice_outside_jis_turns_an_iso_2022_jp_body_into_utf8_without_mojibake() -> None:
    part, label, text, _ = first_part_converted(JIS_7BIT, OSEWA_JIS + b"\r\n", "📎資料.zip")
    assert label == ("utf-8", "base64")
    assert decoded(part) == text + "\nお世話になります\n"


def test_latin1_html_becomes_utf8_and_its_meta_charset_follows() -> None:
    page = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">'
        "</head>\n<body>caf=E9</body></html>\n"
    )
    headers = (
        "Content-Type: text/html; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: Quoted-Printable\n"  # names are case-insensitive
    )
    part, label, _, html = first_part_converted(headers, crlf(page))
    assert label == ("utf-8", "quoted-printable")
    assert 'content="text/html; charset=utf-8"' in decoded(part)
    assert f"<body>\n{html}café</body>" in decoded(part)


def test_unknown_charset_is_read_as_utf8_with_replacement_and_relabelled() -> None:
    headers = "Content-Type: text/plain; charset=x-klingon\nContent-Transfer-Encoding: 8bit\n"
    part, label, _, _ = first_part_converted(headers, b"Qapla\xff\r\n")
    assert label == ("utf-8", "8bit")
    assert decoded(part).endswith("Qapla\ufffd\n")


def test_overlong_line_in_an_8bit_body_is_carried_in_base64() -> None:
    line = "長" * 700  # 2100 octets in UTF-8
    part, label, _, _ = first_part_converted(UTF8_8BIT, crlf(line + "\n"))
    assert label == ("utf-8", "base64")
    assert decoded(part).endswith(line + "\n")


def test_from_lines_in_the_body_are_not_mangled() -> None:
    out = rewrite_message(text_and_zip(UTF8_8BIT, b"From here on\r\n"), [(1,)], *notice())
    assert b"\r\nFrom here on\r\n" in out and b">From" not in out


# --- where the notice goes --------------------------------------------------------------


def test_html_notice_goes_right_after_the_body_tag() -> None:
    page = b'<html><head><title>t</title></head><BODY class="x"><p>hi</p></BODY></html>\r\n'
    part, _, _, html = first_part_converted(HTML_8BIT, page)
    assert decoded(part) == (
        f'<html><head><title>t</title></head><BODY class="x">\n{html}<p>hi</p></BODY></html>\n'
    )


def test_html_without_a_body_tag_gets_the_notice_first() -> None:
    part, _, _, html = first_part_converted(HTML_8BIT, b"<p>hi</p>\r\n")
    assert decoded(part) == html + "<p>hi</p>\n"


def test_single_part_message_that_is_only_the_zip_becomes_a_text_notice() -> None:
    raw = crlf(HEADERS + zip_part())
    text, html = notice()
    out = rewrite_message(raw, [()], text, html)
    message = assert_wire_clean(out)
    assert_no_zip(out)
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "base64"
    assert "Content-Disposition" not in message
    assert lf(message.get_payload(decode=True).decode("utf-8")) == text
    for line in crlf(HEADERS).split(b"\r\n")[:-1]:
        assert out.count(line + b"\r\n") == 1


def test_multipart_with_only_the_zip_gets_a_text_and_html_notice_first() -> None:
    raw = crlf(HEADERS + mixed(zip_part()))
    text, html = notice()
    out = rewrite_message(raw, [(0,)], text, html)
    assert_no_zip(out)
    message = assert_wire_clean(out)
    [alternative] = children(message)
    assert alternative.get_content_type() == "multipart/alternative"
    bodies = body_texts(message)
    assert lf(bodies["plain"]) == text
    assert html in lf(bodies["html"])


def test_multipart_with_only_the_zip_and_no_html_notice_gets_a_text_part() -> None:
    raw = crlf(HEADERS + mixed(zip_part()))
    text, _ = notice()
    [part] = children(assert_wire_clean(rewrite_message(raw, [(0,)], text, "")))
    assert part.get_content_type() == "text/plain"
    assert lf(part.get_payload(decode=True).decode("utf-8")) == text


def test_zip_inside_an_attached_message_goes_but_that_message_gets_no_notice() -> None:
    forwarded = (
        f"{FORWARDED_HEADERS}MIME-Version: 1.0\n"
        + mixed("Content-Type: text/plain\n\ninner body\n", zip_part(), boundary="inner")
    )
    raw = crlf(HEADERS + mixed("Content-Type: text/plain\n\nouter body\n", forwarded))
    text, html = notice()
    out = rewrite_message(raw, [(1, 0, 1)], text, html)
    assert_no_zip(out)
    message = assert_wire_clean(out)
    assert lf(message.get_payload(0).get_payload(decode=True).decode()) == text + "\nouter body"
    inner = part_at(message, (1, 0))
    assert [p.get_payload(decode=True) for p in children(inner)] == [b"inner body"]


def test_attached_message_that_was_only_the_zip_keeps_its_headers_and_says_why() -> None:
    forwarded = FORWARDED_HEADERS + zip_part()
    raw = crlf(HEADERS + mixed("Content-Type: text/plain\n\nouter body\n", forwarded))
    text, html = notice()
    out = rewrite_message(raw, [(1, 0)], text, html)
    assert_no_zip(out)
    inner = part_at(assert_wire_clean(out), (1, 0))
    assert inner["Subject"] == "fwd" and inner.get_content_type() == "text/plain"
    assert URL in inner.get_payload(decode=True).decode("utf-8")


def test_multipart_left_empty_is_dropped() -> None:
    body = "Content-Type: text/plain\n\nbody\n"
    raw = crlf(HEADERS + mixed(body, mixed(zip_part(), boundary="only-zip")))
    message = assert_wire_clean(rewrite_message(raw, [(1, 0)], *notice()))
    assert [p.get_content_type() for p in children(message)] == ["text/plain"]


def test_gateway_header_replaces_one_already_there() -> None:
    raw = b"X-PPAP-Gateway: pass\r\nX-PPAP-Gateway: other\r\n" + crlf(HEADERS + mixed(zip_part()))
    out = rewrite_message(raw, [(0,)], *notice())
    assert re.findall(rb"X-PPAP-Gateway: \w+", out) == [b"X-PPAP-Gateway: converted"]


def test_path_that_names_no_part_is_refused() -> None:
    raw = crlf(HEADERS + mixed(zip_part()))
    with pytest.raises(RewriteError):
        rewrite_message(raw, [(5,)], *notice())
    with pytest.raises(RewriteError):
        rewrite_message(raw, [(0, 0)], *notice())


def test_tree_too_deep_to_serialise_is_refused() -> None:
    nested = zip_part()
    for level in range(60):
        nested = mixed(nested, boundary=f"level{level}")
    with pytest.raises(RewriteError):
        rewrite_message(crlf(HEADERS + nested), [(0,) * 61], *notice())
