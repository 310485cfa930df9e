"""Golden files for the rewrite and sign stages (tests/corpus/golden/README.md): a few real and
hand-made mails rewritten with a fixed notice and a fixed boundary factory, then DKIM-signed with
fixed keys at a fixed time, compared byte for byte with the committed NAME.ref.eml and
NAME.signed.ref.eml. `pytest --update-golden` (or UPDATE_GOLDEN=1) rewrites them.

What the committed files must say is checked here too, so that a careless update cannot slip a
wrong reference in: the ZIP is gone, the notice is there as a reader decodes it, in the charset
the part had, and the signatures verify against the keys' DNS records."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.outbound.dkim import DkimKey, DkimSigner
from gateway.outbound.dkim_keys import private_key_algorithm, public_txt_value
from gateway.pipeline.rewrite import GATEWAY_HEADER, rewrite_message
from tests.support.corpus import CORPUS
from tests.support.golden import GOLDEN, golden_diff, matches_golden

LINK = "https://files.city.example.lg.jp/d/G0ldenT0ken-0123456789abcdefXYZ"
NOTICE_TEXT = (
    "【ダウンロードのご案内】\n"
    "このメールの添付ファイルは、安全のためダウンロードリンクに置き換えました。\n"
    f"{LINK}\n"
    "有効期限: 2026年12月3日(木) 10:30 JST\n"
    "\n"
    "The attachment of this mail was replaced by a download link (see above).\n"
)
NOTICE_HTML = (
    '<div class="ppap-notice" style="border:1px solid #888;padding:8px">'
    "<p>【ダウンロードのご案内】<br>"
    "このメールの添付ファイルは、安全のためダウンロードリンクに置き換えました。</p>"
    f'<p><a href="{LINK}">{LINK}</a></p>'
    "<p>有効期限: 2026年12月3日(木) 10:30 JST</p></div>"
)
SIGNED_AT = datetime(2026, 11, 26, 1, 30, tzinfo=UTC)
KEYS = sorted((GOLDEN / "keys").glob("*._domainkey.*.pem"))


@dataclass(frozen=True)
class Case:
    source: Path
    remove: tuple[tuple[int, ...], ...]  # the ZIP's MIME path, as classify finds it
    charsets: tuple[str, ...]  # of the text parts that carry the notice, in order


CASES = {
    # Outlook: ISO-2022-JP text/plain (7bit) and text/html (quoted-printable) alternatives.
    "01_outlook_jis_aes256": Case(CORPUS / "mail" / "01_outlook_jis_aes256.eml", ((1,),),
                                  ("iso-2022-jp", "iso-2022-jp")),
    # Thunderbird: one UTF-8 8bit text/plain with format=flowed, RFC 2231 file name.
    "02_thunderbird_rfc2231_longname": Case(
        CORPUS / "mail" / "02_thunderbird_rfc2231_longname.eml", ((1,),), ("utf-8",)),
    # A scanner's mail: multipart/mixed holding only the ZIP, no body part to take the notice.
    "03_mfp_zip_only": Case(GOLDEN / "03_mfp_zip_only.in.eml", ((0,),), ("utf-8", "utf-8")),
    # The message is the file (top-level application/zip): it becomes a text-only notice.
    "04_bare_zip": Case(GOLDEN / "04_bare_zip.in.eml", ((),), ("utf-8",)),
    # Gmail: UTF-8 text/plain (base64) and an HTML <div> without <html> or <body> (QP).
    "05_gmail_utf8_alternative_html": Case(
        GOLDEN / "05_gmail_utf8_alternative_html.in.eml", ((1,),), ("utf-8", "utf-8")),
}


def fixed_boundaries():
    """A boundary factory like the rewriter's own ("=_ppap_" and 32 hex digits), but counting."""
    count = itertools.count(1)
    return lambda: f"=_ppap_{next(count):032x}"


def rewritten(name: str) -> bytes:
    case = CASES[name]
    return rewrite_message(case.source.read_bytes(), case.remove, NOTICE_TEXT, NOTICE_HTML,
                           boundary=fixed_boundaries())


def golden_signer() -> DkimSigner:
    keys = []
    for path in KEYS:
        selector, _, rest = path.name.partition("._domainkey.")
        domain = rest.rsplit(".", 2)[0]
        pem = path.read_bytes()  # not load_private_key: git keeps no 0600 mode for it to see
        keys.append(DkimKey(domain, selector, pem, private_key_algorithm(pem)))
    return DkimSigner(keys, clock=lambda: SIGNED_AT)


def golden_dns(name: bytes, timeout: int = 5) -> bytes | None:
    for path in KEYS:
        if name.decode() == path.name.rsplit(".", 2)[0] + ".":
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            return public_txt_value(key).encode()
    return None


def verdicts(message: bytes) -> list[bool]:
    count = len(re.findall(rb"^DKIM-Signature:", message, re.MULTILINE | re.IGNORECASE))
    return [dkim.DKIM(message).verify(idx=index, dnsfunc=golden_dns) for index in range(count)]


# -- the golden files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_rewrite_matches_its_golden_file(name: str, update_golden: bool) -> None:
    matches_golden(rewritten(name), GOLDEN / f"{name}.ref.eml", update_golden)


@pytest.mark.parametrize("name", CASES)
def test_signed_copy_matches_its_golden_file(name: str, update_golden: bool) -> None:
    matches_golden(golden_signer().sign(rewritten(name)), GOLDEN / f"{name}.signed.ref.eml",
                   update_golden)


# -- what the committed files say -----------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_golden_rewrite_has_no_zip_and_the_notice_in_each_body_in_its_charset(name: str) -> None:
    message = message_from_bytes((GOLDEN / f"{name}.ref.eml").read_bytes(), policy=policy.default)
    leaves = [part for part in message.walk() if not part.is_multipart()]
    assert [p for p in leaves if p.get_content_maintype() != "text"] == [], "the ZIP is gone"
    assert all(b"PK\x03\x04" not in (p.get_payload(decode=True) or b"") for p in leaves)
    assert message[GATEWAY_HEADER] == "converted"
    bodies = [p for p in leaves if p.get_content_type() in ("text/plain", "text/html")]
    assert tuple(p.get_content_charset() for p in bodies) == CASES[name].charsets
    for part in bodies:
        text = part.get_content()
        assert LINK in text and "ダウンロードのご案内" in text, part.get_content_type()
        assert "\ufffd" not in text  # decoded without mojibake


def test_golden_rewrite_keeps_the_original_text_after_the_notice() -> None:
    message = message_from_bytes((GOLDEN / "01_outlook_jis_aes256.ref.eml").read_bytes(),
                                 policy=policy.default)
    plain = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_content()
    assert plain.index(LINK) < plain.index("見積書一式を送付いたします")
    assert message.get_content_type() == "multipart/mixed"


@pytest.mark.parametrize("name", CASES)
def test_golden_signed_copy_is_the_rewrite_under_two_verifying_signatures(name: str) -> None:
    signed = (GOLDEN / f"{name}.signed.ref.eml").read_bytes()
    rewrite = (GOLDEN / f"{name}.ref.eml").read_bytes()
    assert signed.endswith(rewrite) and signed.startswith(b"DKIM-Signature:")
    assert verdicts(signed) == [True, True]
    times = re.findall(rb"\bt=(\d+);", signed[: len(signed) - len(rewrite)])
    assert times == [str(int(SIGNED_AT.timestamp())).encode()] * 2


# -- the comparison can fail --------------------------------------------------------------------


def test_a_changed_byte_fails_with_a_diff_naming_the_line(tmp_path: Path) -> None:
    reference = tmp_path / "x.ref.eml"
    reference.write_bytes(b"Subject: a\r\n\r\n\x1b$B$3$s\x1b(B\r\nsame\r\n")
    with pytest.raises(pytest.fail.Exception) as failed:
        matches_golden(b"Subject: b\r\n\r\n\x1b$B$3$s\x1b(B\r\nsame\r\n", reference, update=False)
    assert "-Subject: a" in str(failed.value) and "+Subject: b" in str(failed.value)
    with pytest.raises(pytest.fail.Exception, match="missing"):
        matches_golden(b"x", tmp_path / "absent.ref.eml", update=False)
    matches_golden(b"new", reference, update=True)
    assert reference.read_bytes() == b"new"


def test_the_diff_shows_control_bytes_and_bare_line_ends() -> None:
    diff = golden_diff(b"a\r\n\x1b$B\r\n", b"a\n\r\n\x1b$B\r\n", "x")
    assert "+a\\x0a" in diff and "\\x1b$B" in diff


def test_boundaries_differ_per_copy_unless_a_factory_fixes_them() -> None:
    raw = CASES["03_mfp_zip_only"].source.read_bytes()
    made = [rewrite_message(raw, [(0,)], NOTICE_TEXT, NOTICE_HTML) for _ in range(2)]
    assert made[0] != made[1]  # the default: random boundaries
    assert re.findall(rb'boundary="(=_ppap_[0-9a-f]{32})"', made[0])
    assert rewritten("03_mfp_zip_only") == rewritten("03_mfp_zip_only")
