"""password_candidates and looks_like_password_mail on real and realistic password mails."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.mime import parse_message
from gateway.unlock.candidates import looks_like_password_mail, password_candidates

CORPUS_MAIL = Path(__file__).resolve().parents[1] / "corpus" / "mail"


def corpus_mail(name: str) -> bytes:
    return (CORPUS_MAIL / name).read_bytes()


def mail(
    body: bytes | str,
    *,
    charset: str = "utf-8",
    subject: str = "=?UTF-8?B?5Lu25ZCN?=",
    content_type: str = "text/plain",
    encoding: str = "8bit",
) -> bytes:
    """A single-part message as raw bytes, the body already in its charset and encoding."""
    raw = body.encode(charset) if isinstance(body, str) else body
    if encoding == "base64":
        raw = base64.encodebytes(raw)
    headers = (
        f"From: somu@city.example.lg.jp\r\nTo: tanaka@partner.example.com\r\nSubject: {subject}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}; charset=\"{charset}\"\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return headers.encode("ascii") + raw.replace(b"\n", b"\r\n")


def candidates(raw: bytes, limit: int = 64) -> list[str]:
    return password_candidates(parse_message(raw), limit=limit)


SIGNATURE = """
------------------------------------------
サンプル市 総務部 総務課 文書係
山田 太郎（やまだ たろう）
〒100-8000 サンプル市中央一丁目2番3号
TEL 03-0000-1234（内線 2101） FAX 03-0000-5678
03-0000-9999
somu@city.example.lg.jp
https://www.city.example.lg.jp/
------------------------------------------
"""


def test_corpus_password_mail_gives_its_password_first() -> None:
    root = parse_message(corpus_mail("09b_ppap1_outlook_password.eml"))
    assert password_candidates(root)[0] == "h4Tn9xWe"
    assert looks_like_password_mail(root)


def test_corpus_zip_mail_is_not_a_password_mail() -> None:
    assert not looks_like_password_mail(parse_message(corpus_mail("09a_ppap1_outlook_zip.eml")))


@pytest.mark.parametrize(
    ("body", "first"),
    [
        ("パスワード：h4Tn9xWe", "h4Tn9xWe"),
        ("パスワードは「Xy7#kq2P」です。", "Xy7#kq2P"),
        ("PW: Qm7#vK2p9L", "Qm7#vK2p9L"),
        ("先ほどのメールのパスワードをお送りします。\n\nXy7kq2Pz\n\nよろしくお願いいたします。", "Xy7kq2Pz"),
        ("パスワード:Ab3dEf9h", "Ab3dEf9h"),
        ("パスワード　Ab3dEf9h", "Ab3dEf9h"),
        ("【パスワード】Ab3dEf9h", "Ab3dEf9h"),
        ("■パスワード：Ab3dEf9h", "Ab3dEf9h"),
        ("パスワード（半角英数字）：Ab3dEf9h", "Ab3dEf9h"),
        ("パスワードは以下の通りです。\n\n　Ab3dEf9h\n\n以上、よろしくお願いいたします。", "Ab3dEf9h"),
        ("添付ファイルのパスワードをお知らせします。\nパスワード：Ab3dEf9h", "Ab3dEf9h"),
        ("解凍用パスワード＝Ab3dEf9h", "Ab3dEf9h"),
        ("暗証番号：20261126", "20261126"),
        ("パスワード：『Ab3dEf9h』", "Ab3dEf9h"),
        ("パスワードは Ab3dEf9h です。", "Ab3dEf9h"),
        ("パスワード：Ab3dEf9h（大文字・小文字を区別します）", "Ab3dEf9h"),
        ("※パスワードは「Ab3dEf9h」となります。\n※本メールは送信専用です。", "Ab3dEf9h"),
        ("パス：Ab3dEf9h", "Ab3dEf9h"),
        ("ﾊﾟｽﾜｰﾄﾞ:Ab3dEf9h", "Ab3dEf9h"),
        ("ＰＷ：Ab3dEf9h", "Ab3dEf9h"),
        ("PASS：Ab3dEf9h", "Ab3dEf9h"),
        ("━━━━━━━━━━\nパスワード：Ab3dEf9h\n━━━━━━━━━━", "Ab3dEf9h"),
        ('Password: "Ab3dEf9h"', "Ab3dEf9h"),
        ("The password is Ab3dEf9h.", "Ab3dEf9h"),
        ("Password for the ZIP file: Ab3dEf9h", "Ab3dEf9h"),
        ("Here is the password for the attached file:\n\nAb3dEf9h\n\nBest regards,\nJohn", "Ab3dEf9h"),
        ("Your passcode: Ab3dEf9h", "Ab3dEf9h"),
    ],
)
def test_real_phrasings_give_the_password_first(body: str, first: str) -> None:
    letter = f"株式会社パートナー\n田中様\n\nいつもお世話になっております。\n\n{body}\n{SIGNATURE}"
    assert candidates(mail(letter))[0] == first


def test_full_width_password_is_offered_raw_and_nfkc_normalised() -> None:
    found = candidates(mail("解凍パスワード：ａｂｃ１２３４"))
    assert found[:2] == ["ａｂｃ１２３４", "abc1234"]


def test_password_with_a_space_is_offered_as_first_word_then_whole() -> None:
    # Decision: the value ends at whitespace, but the rest of the label line is tried too
    assert candidates(mail("Password = p@ss w0rd"))[:2] == ["p@ss", "p@ss w0rd"]


def test_sentence_full_stop_after_the_value_is_tried_without_then_with() -> None:
    assert candidates(mail("The password is Ab3dEf9h."))[:2] == ["Ab3dEf9h", "Ab3dEf9h."]


def test_signature_tokens_do_not_crowd_out_an_unlabelled_password() -> None:
    # the password shares its line; the signature's phone number and URL stand alone on theirs
    body = "別途お送りしたファイルは、次の文字列 Ab3dEf9h で開けます。\n" + SIGNATURE
    assert candidates(mail(body), limit=3)[0] == "Ab3dEf9h"


def test_unlabelled_password_framed_by_rules_is_not_taken_for_a_signature() -> None:
    body = (
        "Dear Tanaka-san,\nファイルを開く文字列です。\n━━━━━━━━━━\nAb3dEf9h\n━━━━━━━━━━\n"
        "Best regards, Yamada Taro\n" + SIGNATURE
    )
    assert candidates(mail(body))[0] == "Ab3dEf9h"


def test_katakana_word_starting_with_pasu_is_no_label() -> None:
    raw = mail("パスポートの写しをお送りします。\nAb3dEf9h")
    assert not looks_like_password_mail(parse_message(raw))


def test_iso_2022_jp_body_with_outlook_extension_characters() -> None:
    # ①パスワード：Ab3dEf9h in JIS, ① from NEC row 13 (not in strict ISO-2022-JP)
    body = b"\x1b$B-!%Q%9%o!<%I!'\x1b(BAb3dEf9h\n"
    assert candidates(mail(body, charset="iso-2022-jp", encoding="7bit"))[0] == "Ab3dEf9h"


def test_shift_jis_body_is_read_as_cp932() -> None:
    raw = mail("㈱パートナー様\nパスワード：Ab3dEf9h".encode("cp932"), charset="Shift_JIS")
    assert candidates(raw)[0] == "Ab3dEf9h"


def test_base64_utf8_body() -> None:
    assert candidates(mail("パスワード：Ab3dEf9h", encoding="base64"))[0] == "Ab3dEf9h"


def test_password_in_the_rfc2047_subject_alone() -> None:
    subject = "=?UTF-8?B?" + base64.b64encode("パスワード：Ab3dEf9h".encode()).decode() + "?="
    assert candidates(mail("", subject=subject))[0] == "Ab3dEf9h"


def test_html_only_mail_is_read_without_tags_styles_or_scripts() -> None:
    html = (
        "<html><head><style>p.MsoNormal{font-family:Pwd0000}</style></head><body>"
        "<script>var password = 'Script123';</script>"
        "<p>パスワード：<b>Ab3dEf9h</b></p><p>&nbsp;</p></body></html>"
    )
    found = candidates(mail(html, content_type="text/html"))
    assert found[0] == "Ab3dEf9h"
    assert "Script123" not in found and "Pwd0000" not in " ".join(found)


def test_html_alternative_is_ignored_when_text_plain_exists() -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPW: Plain1234\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>PW: Html12345</p>\r\n--b--\r\n"
    )
    assert "Html12345" not in candidates(raw)
    assert candidates(raw)[0] == "Plain1234"


def test_candidates_are_capped_and_within_64_characters() -> None:
    body = "\n".join(f"token{index:04d}" for index in range(300)) + "\nPW: " + "x" * 65
    found = candidates(mail(body))
    assert len(found) == 64
    assert all(1 <= len(candidate) <= 64 for candidate in found)
    assert len(candidates(mail(body), limit=5)) == 5


def test_candidates_are_unique() -> None:
    found = candidates(mail("PW: Ab3dEf9h\n「Ab3dEf9h」\nAb3dEf9h Ab3dEf9h"))
    assert found.count("Ab3dEf9h") == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"Subject: \r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n",
        mail(b"\xff\xfe\x80 PW: Ab3dEf9h", charset="x-unknown-charset"),
        mail(b"PW: Ab3dEf9h", encoding="base64")[:-3] + b"!!!",
        mail("<p>unclosed <b <!-- comment " * 50, content_type="text/html"),
        b"Subject: =?iso-2022-jp?B?GyRCJVElOSVvITwlSRsoQg?=\r\n\r\n" + b"\x1b$B" * 100,
    ],
)
def test_empty_and_odd_mails_give_a_list_without_crashing(raw: bytes) -> None:
    assert isinstance(candidates(raw), list)
    assert isinstance(looks_like_password_mail(parse_message(raw)), bool)


def test_unknown_charset_still_finds_the_password() -> None:
    raw = mail(b"PW: Ab3dEf9h \xff\xfe", charset="x-unknown-charset")
    assert candidates(raw)[0] == "Ab3dEf9h"


def test_long_text_is_not_a_password_mail() -> None:
    body = "パスワード：Ab3dEf9h\n" + "本文です。" * 2000
    assert not looks_like_password_mail(parse_message(mail(body)))


def test_mail_without_label_or_quote_is_not_a_password_mail() -> None:
    assert not looks_like_password_mail(parse_message(mail("お世話になっております。\nAb3dEf9h")))


def test_quoted_string_alone_makes_a_password_mail() -> None:
    assert looks_like_password_mail(parse_message(mail("先ほどのファイルは「Ab3dEf9h」で開けます。")))
