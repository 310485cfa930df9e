"""Large leaf bodies are handed to the parser whole (gateway/mime.py `opaque`, found by the
structure scan in gateway/pipeline/parse.py): the tree must be the one the parser makes of the
whole message, and the memory a small multiple of the mail, not the parser's eight."""

from __future__ import annotations

import io
import os
import random
import tracemalloc
from email.generator import BytesGenerator
from pathlib import Path

import pyzipper
import pytest

from gateway.containers.contents import InspectionLimits
from gateway.errors import StructureLimitExceeded, UnparseableMessage
from gateway import mime as mime_module
from gateway.mime import parse_message
from gateway.outbound import dkim as dkim_module
from gateway.outbound.dkim import DkimKey, DkimSigner
from gateway.outbound.dkim_keys import generate_dkim_key, load_private_key
from gateway.pipeline import parse as parse_module
from gateway.pipeline import rewrite as rewrite_module
from gateway.pipeline.classify import content_inspector, parse_and_classify
from gateway.pipeline.parse import MimeLimits, check_limits
from gateway.wire import crlf_line_endings
from tests.fuzz.mutators import mutate
from tests.fuzz.seeds import all_seeds
from tests.support import evasions as ev
from tests.support.corpus import CORPUS

MAILS = sorted((CORPUS / "mail").glob("*.eml"))


def built_mails() -> dict[str, bytes]:
    """Shapes around the spans: dashes in bodies, a part without its empty line, a message
    inside, a body at the end without its delimiter, a leaf directly in the root."""
    body = ev.b64(os.urandom(3000))
    return {
        "plain leaf root": ev.HEAD + b"Content-Type: text/plain\r\n\r\n" + b"x" * 5000 + b"\r\n",
        "dashes in a body": ev.mixed(ev.TEXT, b"Content-Type: text/plain\r\n\r\nsig\r\n-- \r\n"
                                     b"--BOUNDx\r\n" + body, ev.zip_part()),
        "no empty line": ev.mixed(b"Content-Type: text/plain\r\n", ev.zip_part()),
        "message inside": ev.mixed(ev.TEXT, b"Content-Type: message/rfc822\r\n\r\n"
                                   + ev.mixed(ev.TEXT, ev.zip_part(), boundary=b"IN")),
        "unclosed": ev.mixed(ev.TEXT, ev.zip_part())[:-len(b"--BOUND--\r\n")],
        "nested": ev.mixed(ev.TEXT, b"Content-Type: multipart/mixed; boundary=\"IN\"\r\n\r\n--IN\r\n"
                           + ev.zip_part() + b"\r\n--IN--\r\n"),
        "bare-LF body": ev.mixed(ev.TEXT, b"Content-Type: text/plain\r\n\r\na\nb\r\n" + body),
    }


def same_tree(raw: bytes, monkeypatch) -> tuple[int, bool]:
    """How many spans the scan found, and whether the tree parsed around them is the whole
    parse's; a parse around spans that had to fall back to the whole parse fails here (the
    scan would have found spans the parser reads differently)."""
    spans = check_limits(raw, MimeLimits())
    parses = []
    real_parse = mime_module._parse
    monkeypatch.setattr(mime_module, "_parse", lambda *args: parses.append(1) or real_parse(*args))
    around = parse_message(raw, spans)
    assert len(parses) == 1, "fell back to the whole parse"
    whole = parse_message(raw)
    pairs = list(zip(around.walk(), whole.walk(), strict=True))
    same = around.as_bytes() == whole.as_bytes() and all(
        a.get_payload() == b.get_payload() and a.items() == b.items()
        and [type(d) for d in a.defects] == [type(d) for d in b.defects]
        for a, b in pairs if not a.is_multipart()
    )
    return len(spans), same


@pytest.mark.parametrize("path", MAILS, ids=lambda p: p.stem)
def test_every_corpus_mail_parses_to_the_same_tree_around_its_bodies(path: Path, monkeypatch):
    monkeypatch.setattr(parse_module, "OPAQUE_BODY_MIN", 1)  # every leaf body, however small
    spans, same = same_tree(path.read_bytes(), monkeypatch)
    assert same


@pytest.mark.parametrize("name", sorted(built_mails()))
def test_odd_shapes_parse_to_the_same_tree_around_their_bodies(name: str, monkeypatch):
    monkeypatch.setattr(parse_module, "OPAQUE_BODY_MIN", 1)
    spans, same = same_tree(built_mails()[name], monkeypatch)
    assert same


def test_the_corpus_mails_have_bodies_taken_whole(monkeypatch):
    """So the two tests above are about something: spans are found in real client mail."""
    monkeypatch.setattr(parse_module, "OPAQUE_BODY_MIN", 1)
    with_spans = [p.stem for p in MAILS if check_limits(p.read_bytes(), MimeLimits())]
    assert len(with_spans) >= len(MAILS) // 2, with_spans


def test_a_span_the_parser_reads_differently_falls_back_to_the_whole_parse():
    raw = ev.mixed(ev.TEXT, ev.zip_part())
    start = raw.index(b"UEsD")  # inside the ZIP part's body, not all of it
    wrong = ((start, start + 100),)
    tree = parse_message(raw, wrong)
    assert tree.as_bytes() == parse_message(raw).as_bytes()
    assert "UEsD" in tree.get_payload()[1].get_payload()


def large_ppap(size: int) -> bytes:
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", compression=pyzipper.ZIP_STORED,
                             encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(b"secret")
        archive.writestr("data.bin", os.urandom(size))
    return ev.mixed(ev.TEXT, ev.zip_part(buffer.getvalue()))


def peak_of(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_classifying_a_large_ppap_mail_holds_its_body_once_and_the_decoded_zip():
    """Before: 8.7 x the mail to parse, then a copy per get_payload() (the stdlib encodes a
    str payload whole to look for surrogates), and two more in rstrip(); then the body held
    as a string beside the received bytes. Now only the decoded ZIP."""
    raw = large_ppap(8 * 1024 * 1024)
    inspector = content_inspector(MimeLimits(), InspectionLimits())
    peak = peak_of(lambda: parse_and_classify(raw, MimeLimits(), inspector))
    print(f"classify: peak {peak / len(raw):.2f} x the mail")
    assert peak < 0.9 * len(raw)  # the decoded ZIP (0.75); the body stays in `raw`


def test_a_copy_is_written_as_the_stdlib_writes_it_without_its_line_list(monkeypatch):
    monkeypatch.setattr(parse_module, "OPAQUE_BODY_MIN", 1)  # bodies kept as spans, too
    for path in MAILS:
        raw = crlf_line_endings(path.read_bytes())
        around = parse_message(raw, check_limits(raw, MimeLimits()))
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False, policy=rewrite_module._OUTPUT_POLICY).flatten(
            parse_message(raw))
        assert rewrite_module._serialise(around) == buffer.getvalue(), path.stem
    for path in MAILS:
        tree = parse_message(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False, policy=rewrite_module._OUTPUT_POLICY).flatten(tree)
        assert rewrite_module._serialise(tree) == buffer.getvalue(), path.stem
    raw = large_ppap(4 * 1024 * 1024)
    tree = parse_message(raw, check_limits(raw, MimeLimits()))
    assert peak_of(lambda: rewrite_module._serialise(tree)) < 2.5 * len(raw)  # was 2.9 + 1


def test_finding_the_signing_domain_reads_only_the_header_section(tmp_path):
    """A copy whose From domain has no key is not signed, and finding that out reads its header
    section only (the header parser given the whole message split the body into lines: 8 x)."""
    raw = large_ppap(4 * 1024 * 1024)
    key = generate_dkim_key("other.example.jp", "s", tmp_path, "ed25519-sha256")
    signer = DkimSigner([DkimKey("other.example.jp", "s", load_private_key(key.key_path),
                                 "ed25519-sha256")])
    assert dkim_module._from_domain(raw[:raw.index(b"\r\n\r\n") + 4]) == "city.example.lg.jp"
    assert signer.sign(raw) is raw
    assert peak_of(lambda: signer.sign(raw)) < 0.05 * len(raw)


def serialised(tree) -> bytes | str:
    """The tree's bytes, or the error the generator raises on it (a decoded non-ASCII header)."""
    try:
        return tree.as_bytes()
    except (UnicodeError, LookupError) as error:
        return type(error).__name__


def test_fuzzed_mails_parse_to_the_same_tree_around_their_bodies(monkeypatch):
    """The fuzzer's mutations (tests/fuzz) of the real-client seeds, every leaf body a span
    candidate: the parse around the spans equals the whole parse for each (a fallback is
    allowed; a different tree is not), and most take the fast path."""
    monkeypatch.setattr(parse_module, "OPAQUE_BODY_MIN", 1)
    seeds = all_seeds()
    compared = fast = 0
    for index in range(300):
        rng = random.Random(f"opaque-parse:{index}")
        data, _, _, _ = mutate(rng.choice(seeds).data, {}, rng)
        raw = crlf_line_endings(data)  # as the relay's first stage makes every message
        try:
            spans = check_limits(raw, MimeLimits())
            whole = parse_message(raw)
        except (StructureLimitExceeded, UnparseableMessage):
            continue
        around = parse_message(raw, spans)
        pairs = list(zip(around.walk(), whole.walk(), strict=True))
        assert serialised(around) == serialised(whole), index
        if isinstance(serialised(whole), bytes):  # and as the rewriter writes a copy
            assert rewrite_module._serialise(around) == rewrite_module._serialise(whole), index
        assert all(a.get_payload() == b.get_payload() for a, b in pairs if not a.is_multipart())
        compared += 1
        fast += bool(spans) and all(
            not isinstance(p.get_payload(), str) or not p.get_payload().startswith("ppap-gateway-body-")
            for p in around.walk())
    print(f"{compared} fuzzed mails compared, {fast} with spans")
    assert compared >= 250 and fast >= 150


def test_an_8bit_body_is_read_as_its_bytes_not_as_text_with_replacement_characters():
    """compat32's get_payload() decodes a body holding 8-bit bytes by its charset, with
    U+FFFD for what does not decode: a ZIP sent `Content-Transfer-Encoding: binary` read that
    way is not the ZIP the recipient saves. The body is read as the bytes that arrived, small
    (parsed) or large (a span) alike."""
    archive = ev.AES_ZIP
    assert any(byte >= 0x80 for byte in archive)
    part = (b"Content-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: binary\r\n"
            b"Content-Disposition: attachment; filename=\"a.zip\"\r\n\r\n")
    raw = ev.mixed(ev.TEXT, part + archive)
    for threshold in (1, 10**9):  # a span, and the parser's own string
        parse_module.OPAQUE_BODY_MIN, saved = threshold, parse_module.OPAQUE_BODY_MIN
        try:
            tree = parse_message(raw, check_limits(raw, MimeLimits()))
        finally:
            parse_module.OPAQUE_BODY_MIN = saved
        assert mime_module.decoded_body(tree.get_payload()[1]) == archive, threshold
