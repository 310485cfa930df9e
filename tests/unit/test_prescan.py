"""classify's shortcut for one plain text part (gateway.pipeline.prescan, classify_raw): over the
corpus, one-part mails made from every part of it, files hidden in their text, and seeded
mutations of all of those, what it vouches for the full classifier finds nothing in, and a
limit refuses a message alike on both ways; every way the full way catches a file in a
plain-looking mail is not vouched for."""

from __future__ import annotations

import base64
import binascii
import quopri
import random
from email import message_from_bytes, policy

import pytest

from gateway.containers.contents import InspectionLimits
from gateway.errors import HeaderLimitExceeded
from gateway.model import Classification
from gateway.pipeline.classify import classify_raw, content_inspector, parse_and_classify
from gateway.pipeline.parse import MimeLimits
from gateway.pipeline.prescan import plain_text
from tests.support import evasions as ev
from tests.support.corpus import CORPUS
from tests.support.prescan_oracle import as_framed, check

MAILS = sorted((CORPUS / "mail").glob("*.eml"))
ZIP = ev.AES_ZIP
HEAD = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
        b"Subject: plain\r\nMessage-ID: <plain@city.example.lg.jp>\r\n")
PROSE = b"Thank you for your mail. We will reply by Friday.\r\n" * 20
JIS = "いつもお世話になっております。\r\n見積書をお送りします。\r\n".encode("iso-2022-jp") * 8


def plain(body: bytes = PROSE, fields: bytes = b"", head: bytes = HEAD) -> bytes:
    return head + fields + b"\r\n" + body


# --- the cases: corpus, one-part mails from its parts, hidden files, mutations --------------

def outer_fields(mail: bytes) -> bytes:
    """The corpus mail's header section without its MIME fields."""
    section = mail[:mail.find(b"\r\n\r\n")]
    kept, keep = [], False
    for line in section.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            keep = not line.lower().startswith(b"content-")
        if keep:
            kept.append(line)
    return b"\r\n".join(kept) + b"\r\n"


def encoded(body: bytes, encoding: str) -> bytes:
    if encoding == "quoted-printable":
        return quopri.encodestring(body).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if encoding == "base64":
        return ev.b64(body)
    return body


def one_part_mails() -> list[bytes]:
    """Every leaf of every corpus mail as the one part of a mail, under several labels."""
    made = []
    for path in MAILS:
        mail = path.read_bytes()
        head = outer_fields(mail)
        for part in message_from_bytes(mail, policy=policy.compat32).walk():
            if part.is_multipart():
                continue
            body = part.get_payload(decode=True) or b""
            for ctype in (b"text/plain; charset=\"iso-2022-jp\"", b"text/html; charset=utf-8",
                          part.get("content-type", "text/plain").encode(), None):
                for encoding in ("", "7bit", "8bit", "quoted-printable", "base64"):
                    fields = b"MIME-Version: 1.0\r\n"
                    if ctype is not None:
                        fields += b"Content-Type: " + ctype + b"\r\n"
                    if encoding:
                        fields += b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n"
                    made.append(head + fields + b"\r\n" + encoded(body, encoding))
    return made


def hidden_files() -> dict[str, bytes]:
    """Plain-looking one-part mails with a file in them, each a way the full way catches."""
    uu = b"".join(binascii.b2a_uu(ZIP[i:i + 45]) for i in range(0, len(ZIP), 45))
    spread = b" ".join(base64.b64encode(ZIP)[i:i + 3] for i in range(0, len(base64.b64encode(ZIP)), 3))
    qp_zip = quopri.encodestring(ZIP, quotetabs=True)
    shifted = bytes((value + 42) % 256 for value in ZIP)  # yEnc, its critical bytes escaped
    yenc = b"".join(b"=" + bytes([(byte + 64) % 256]) if byte in b"\x00\n\r=" else bytes([byte])
                    for byte in shifted)
    return {
        "base64 pasted in the text": ev.base64_in_body(),
        "uuencode in the text": ev.uuencoded_in_body(),
        "base64 among prose (no run)": plain(b"Here it is: " + spread + b"\r\n"),
        "base64 quoted in a reply": plain(b"> " + ev.b64(ZIP).replace(b"\r\n", b"\r\n> ")),
        "base64 in a header field": plain(fields=b"X-Attached:\r\n " + ev.b64(ZIP).replace(
            b"\r\n", b"\r\n ").rstrip(b" ")),
        "base64 folded into the subject": HEAD.replace(
            b"Subject: plain\r\n", b"Subject: plain\r\n " + ev.b64(ZIP).replace(b"\r\n", b"\r\n ")
        ).rstrip(b" ") + b"\r\n" + PROSE,
        "data: URI in HTML": plain(b"<img src=\"data:application/zip;base64,"
                                   + base64.b64encode(ZIP) + b"\">\r\n",
                                   b"Content-Type: text/html\r\n"),
        "quoted-printable ZIP labelled so": plain(qp_zip, b"Content-Transfer-Encoding: quoted-printable\r\n"),
        "quoted-printable ZIP unlabelled": plain(qp_zip),
        "yEnc in the text": plain(b"=ybegin line=128 size=%d name=a.zip\r\n" % len(ZIP) + yenc
                                  + b"\r\n=yend size=%d\r\n" % len(ZIP)),
        "message/partial": plain(fields=b"Content-Type: message/partial; id=\"x\"; number=1\r\n"),
        "a filename on the text part": plain(fields=b"Content-Disposition: attachment; filename=\"a.txt\"\r\n"),
        "a name on the text part": plain(fields=b"Content-Type: text/plain; name=\"a.zip\"\r\n"),
        "a ZIP typed as text in base64": plain(ev.b64(ZIP), b"Content-Type: text/plain\r\n"
                                                            b"Content-Transfer-Encoding: base64\r\n"),
        "a forwarded message as the body": plain(ev.ordinary()),
        "multipart with a ZIP": ev.ordinary(),
        "uuencode as the transfer encoding": plain(b"begin 644 a.zip\r\n" + uu.replace(b"\n", b"\r\n")
                                                   + b"`\r\nend\r\n",
                                                   b"Content-Transfer-Encoding: x-uuencode\r\n"),
    }


SNIPPETS = (
    b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b";", b"=", b"\"", b"--", b"=?UTF-8?B?", b"?=",
    b"\r\nContent-Disposition: attachment; filename=\"a.zip\"",
    b"\r\nContent-Type: multipart/mixed; boundary=\"x\"", b"\r\nContent-Type: text/plain; name=a.zip",
    b"\r\nContent-Transfer-Encoding: base64", b"\r\nContent-Transfer-Encoding: quoted-printable",
    b"\r\nContent-Type: message/rfc822", b"\r\nbegin 644 a.zip\r\n", b"\r\n=ybegin line=1 name=a\r\n",
    b"%PDF-1.4", b"From ", b"\r\n\r\n", b"\x1b$B", b"\xe3\x81\x82", b"=3D", b"=\r\n",
    base64.b64encode(ZIP[:300]), b"\r\n" + ev.b64(ZIP[:600]), b"PK\x03\x04", b"-----BEGIN PGP MESSAGE-----",
)


def mutated(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.choice((1, 1, 2, 3))):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0:
            data = data[:at] + rng.choice(SNIPPETS) + data[at:]
        elif kind == 1:
            data = data[:at] + data[at + rng.randrange(1, 40):]
        elif kind == 2 and data:
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        elif kind == 3:
            data = data[:at] + data[at:].swapcase()[:20] + data[at + 20:]
        else:
            line_start = data.rfind(b"\r\n", 0, at) + 2
            line_end = data.find(b"\r\n", at)
            if line_end > line_start:
                data = data[:line_end] + data[line_start - 2:line_end] + data[line_end:]
    return data


def all_cases() -> list[tuple[str, bytes]]:
    cases = [(path.name, path.read_bytes()) for path in MAILS]
    cases += [(f"one-part {index}", mail) for index, mail in enumerate(one_part_mails())]
    cases += [(name, mail) for name, mail in hidden_files().items()]
    cases += [("prose", plain()), ("jis", plain(JIS, b"Content-Type: text/plain; charset=iso-2022-jp\r\n"))]
    rng = random.Random(20261207)
    bases = [mail for _, mail in cases]
    cases += [(f"mutation {index}", mutated(rng.choice(bases), rng)) for index in range(1500)]
    return cases


# --- the property --------------------------------------------------------------------------

def test_what_the_shortcut_vouches_for_the_full_classifier_finds_nothing_in():
    vouched, refused, problems = 0, 0, []
    for name, data in all_cases():
        raw = as_framed(data)
        if raw is None:
            continue
        said, wrong = check(raw)
        vouched += said
        refused += not said
        problems += [f"{name}: {problem}" for problem in wrong]
    assert problems == []
    # a property over cases it never vouches for (or always does) would prove nothing
    assert vouched >= 300 and refused >= 300, (vouched, refused)


@pytest.mark.parametrize("name", sorted(hidden_files()))
def test_no_file_in_a_plain_looking_mail_is_vouched_for(name):
    raw = as_framed(hidden_files()[name])
    limits = MimeLimits()
    _, full = parse_and_classify(raw, limits, content_inspector(limits, InspectionLimits()))
    assert full != Classification(attachments=()), "the full way must catch it, or the case is moot"
    _, found = classify_raw(raw, limits, content_inspector(limits, InspectionLimits()))
    assert found is None


def test_plain_mail_is_vouched_for_without_a_parse_in_ascii_jis_and_quoted_printable():
    limits = MimeLimits()
    for body, fields in ((PROSE, b""), (JIS, b"Content-Type: text/plain; charset=ISO-2022-JP\r\n"),
                         (quopri.encodestring("お世話になります。\r\n".encode() * 30),
                          b"Content-Type: text/plain; charset=utf-8\r\n"
                          b"Content-Transfer-Encoding: quoted-printable\r\n")):
        _, found = classify_raw(plain(body, fields), limits, content_inspector(limits, InspectionLimits()))
        assert found == Classification(attachments=())


def test_a_header_limit_refuses_on_the_shortcut_as_on_the_full_way():
    raw = plain(fields=b"X-Long: " + b"a" * 9000 + b"\r\n")
    assert plain_text(raw) is not None  # the shape alone would be vouched for
    limits = MimeLimits()
    for run in (lambda: classify_raw(raw, limits, None), lambda: parse_and_classify(raw, limits)):
        with pytest.raises(HeaderLimitExceeded, match="header line longer than 8192 bytes"):
            run()


def test_the_classify_stage_parses_a_plain_mail_only_when_a_later_stage_reads_it(monkeypatch):
    import asyncio

    from gateway.config import build_config
    from gateway.model import Envelope
    from gateway.pipeline import classify as classify_module
    from gateway.pipeline.transaction import Transaction

    parses = []
    parse = classify_module.parse_message
    monkeypatch.setattr(classify_module, "parse_message",
                        lambda *args: parses.append(1) or parse(*args))
    config = build_config({"gateway": {"internal_domains": ["city.example.lg.jp"]}}, environ={})
    tx = Transaction(Envelope(ev.SENDER, (ev.EXTERNAL,)), plain())
    asyncio.run(classify_module.Classify(config).process(tx))
    assert (tx.classification, parses) == (Classification(attachments=()), [])
    assert tx.message["Subject"] == "plain" and parses == [1]  # parsed when asked, once
    assert tx.message is tx.message and parses == [1]
