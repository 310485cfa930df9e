"""MIME and header limits measured on the raw bytes, before Python's email parser sees them."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.errors import HeaderLimitExceeded, MimeLimitExceeded
from gateway.mime import parse_message, walk_with_paths
from gateway.pipeline.classify import parse_and_classify
from gateway.pipeline.parse import MimeLimits, check_limits
from gateway.replies import reply_for_exception
from tests.support.config import make_config
from tests.support.corpus import CORPUS

HEAD = b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\nSubject: t\r\n"
TEXT = b"Content-Type: text/plain\r\n\r\nhello\r\n"


def nested_multipart(depth: int) -> bytes:
    opening = [b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (i, i)
               for i in range(depth)]
    closing = [b"--b%d--\r\n" % i for i in reversed(range(depth))]
    return HEAD + b"".join(opening) + TEXT + b"".join(closing)


def nested_rfc822(depth: int) -> bytes:
    return HEAD + b"Content-Type: message/rfc822\r\n\r\n" * depth + TEXT


def wide_multipart(parts: int) -> bytes:
    body = b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" * parts
    return HEAD + b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n" + body + b"--B--\r\n"


def measured(raw: bytes) -> tuple[int, int]:
    """(deepest part, number of parts) as the standard library's parser sees them."""
    paths = [path for path, _ in walk_with_paths(parse_message(raw), max_depth=10**6)]
    return max(len(p) for p in paths), len(paths)


def assert_limits_are_exact(raw: bytes) -> None:
    depth, parts = measured(raw)
    check_limits(raw, MimeLimits(max_depth=max(depth, 1), max_parts=parts))
    if parts > 1:
        with pytest.raises(MimeLimitExceeded, match="parts"):
            check_limits(raw, MimeLimits(max_parts=parts - 1))
    if depth > 1:
        with pytest.raises(MimeLimitExceeded, match="deeper"):
            check_limits(raw, MimeLimits(max_depth=depth - 1, max_parts=parts))


@pytest.mark.parametrize("path", sorted((CORPUS / "mail").glob("*.eml")), ids=lambda p: p.stem)
def test_scan_counts_depth_and_parts_of_corpus_mail_as_the_parser_does(path: Path):
    assert_limits_are_exact(path.read_bytes())


def random_tree(rng: random.Random, depth: int = 0) -> bytes:
    kind = rng.choice(["text", "mixed", "digest", "rfc822", "unclosed"] if depth < 6 else ["text"])
    if kind == "text":
        return rng.choice([
            TEXT,
            b"Content-Type: text/plain\r\n\r\n-- \r\n--x\r\n",  # signature and look-alike lines
            b"Content-Type: text/plain\r\nno empty line before this body\r\n",
            b"Content-Type: text/plain\r\n",  # headers only, the next delimiter right after
            b"",  # no headers at all
        ])
    if kind == "rfc822":
        inner = random_tree(rng, depth + 1)
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + inner
    boundary = b"=_%d_%d" % (depth, rng.randrange(3))  # boundaries repeat across levels
    subtype = b"digest" if kind == "digest" else b"mixed"
    header = rng.choice([b"Content-Type: multipart/%s; boundary=\"%s\"\r\n",
                         b"content-type: multipart/%s;\r\n\tboundary=%s\r\nX-After: folded\r\n"])
    out = [header % (subtype, boundary) + b"\r\npreamble\r\n"]
    for _ in range(rng.randrange(0, 4)):
        child = random_tree(rng, depth + 1)
        if kind == "digest" and rng.random() < 0.5:
            child = b"\r\nSubject: defaulted to message/rfc822\r\n\r\nbody\r\n"
        out.append(b"--%s\r\n%s" % (boundary, child))
    if kind != "unclosed":
        out.append(b"--%s--\r\nepilogue\r\n" % boundary)
    return b"".join(out)


def test_scan_agrees_with_the_parser_on_random_nested_structures():
    rng = random.Random(20261126)
    for _ in range(500):
        assert_limits_are_exact(HEAD + random_tree(rng))


def test_thousand_deep_multipart_is_refused_fast_with_the_depth_as_reason():
    started = time.monotonic()
    with pytest.raises(MimeLimitExceeded, match="nesting deeper than 50"):
        check_limits(nested_multipart(1000), MimeLimits())
    assert time.monotonic() - started < 1


def test_thousand_deep_attached_messages_are_refused():
    with pytest.raises(MimeLimitExceeded, match="nesting deeper than 50"):
        check_limits(nested_rfc822(1000), MimeLimits())


def test_depth_limit_admits_exactly_the_configured_depth():
    check_limits(nested_multipart(50), MimeLimits(max_depth=50))
    with pytest.raises(MimeLimitExceeded):
        check_limits(nested_multipart(51), MimeLimits(max_depth=50))


def test_hundred_thousand_parts_are_refused_fast_with_the_count_as_reason():
    raw = wide_multipart(100_000)
    started = time.monotonic()
    with pytest.raises(MimeLimitExceeded, match="more than 1000 MIME parts"):
        check_limits(raw, MimeLimits())
    assert time.monotonic() - started < 1


def test_lines_that_merely_start_like_a_delimiter_cost_no_parts_and_little_time():
    lookalikes = b"--Bx\r\n--B-\r\n--\r\n" * 1_000_000  # 16 MB of near-misses
    raw = (HEAD + b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n"
           + b"Content-Type: text/plain\r\n\r\n" + lookalikes + b"--B--\r\n")
    started = time.monotonic()
    check_limits(raw, MimeLimits(max_parts=2))
    assert time.monotonic() - started < 2


def test_header_field_count_is_capped_and_folded_lines_are_not_fields():
    folded = b"X-Folded: a\r\n b\r\n\tc\r\n"
    at_limit = HEAD + folded * 997 + b"\r\nbody\r\n"  # 3 + 997 fields
    check_limits(at_limit, MimeLimits(max_header_fields=1000))
    with pytest.raises(HeaderLimitExceeded, match="1001 header fields, limit 1000"):
        check_limits(HEAD + folded * 998 + b"\r\nbody\r\n", MimeLimits(max_header_fields=1000))


def test_header_line_length_is_capped_but_body_lines_are_not():
    check_limits(HEAD + b"X-Long: " + b"a" * 8184 + b"\r\n\r\n" + b"b" * 60000 + b"\r\n",
                 MimeLimits(max_header_line=8192))
    with pytest.raises(HeaderLimitExceeded, match="longer than 8192"):
        check_limits(HEAD + b"X-Long: " + b"a" * 8185 + b"\r\n\r\nbody\r\n",
                     MimeLimits(max_header_line=8192))


def test_bare_lf_messages_are_measured_too():
    with pytest.raises(MimeLimitExceeded):
        check_limits(nested_multipart(60).replace(b"\r\n", b"\n"), MimeLimits())
    with pytest.raises(HeaderLimitExceeded):
        check_limits((HEAD + b"X: y\r\n" * 20 + b"\r\nbody").replace(b"\r\n", b"\n"),
                     MimeLimits(max_header_fields=10))


def quoted_semicolons(count: int) -> bytes:
    """A Content-Type whose one quoted value holds `count` ';' (compat32 splits parameters in
    time quadratic in them, CPython gh-136063), folded so that no line is over 8 KB."""
    lines = [b";" * 4000] * (count // 4000) + [b";" * (count % 4000)]
    return b'Content-Type: multipart/mixed; boundary="B"; x="' + b"\r\n ".join(lines) + b'"\r\n'


def with_content_type(field: bytes, where: str) -> bytes:
    inner = b"\r\n--B\r\n" + TEXT + b"--B--\r\n"
    if where == "message header":
        return HEAD + field + inner
    outer = b'Content-Type: multipart/mixed; boundary="A"\r\n\r\n--A\r\n'
    return HEAD + outer + field + inner + b"--A--\r\n"


@pytest.mark.parametrize("where, count", [("message header", 1_000_000), ("part header", 60_000)])
def test_a_content_type_of_quoted_semicolons_is_refused_in_linear_time(where, count):
    raw = with_content_type(quoted_semicolons(count), where)
    started = time.process_time()
    with pytest.raises(MimeLimitExceeded, match="Content-Type header field longer than 16384"):
        check_limits(raw, MimeLimits())
    spent = time.process_time() - started
    print(f"{len(raw)} bytes, {count} quoted ';' in the {where}: refused in {spent:.3f} s")
    assert spent < 1  # the stdlib's splitter took minutes on the megabyte


def test_mime_fields_are_capped_in_bytes_and_parameters_exactly_at_the_limits():
    def disposition(semicolons: int, size: int) -> bytes:  # `size` bytes before its CRLF
        start = b'Content-Disposition: attachment; filename="a' + b";" * (semicolons - 1)
        return start + b"b" * (size - len(start) - 1) + b'"\r\n'

    def message(field: bytes) -> bytes:  # in a part: the message's header lines stop at 8 KB
        return (HEAD + b'Content-Type: multipart/mixed; boundary="A"\r\n\r\n--A\r\n'
                + b"Content-Type: text/plain\r\n" + field + b"\r\nhello\r\n--A--\r\n")

    check_limits(message(disposition(100, 16384)), MimeLimits())
    with pytest.raises(MimeLimitExceeded, match="Content-Disposition header field with more "
                                                "than 100 parameters"):
        check_limits(message(disposition(101, 1000)), MimeLimits())
    with pytest.raises(MimeLimitExceeded, match="Content-Disposition header field longer than"):
        check_limits(message(disposition(2, 16385)), MimeLimits())
    check_limits(message(disposition(101, 1000)), MimeLimits(max_mime_params=101))


def test_a_dashed_header_line_does_not_hide_the_rest_of_a_part_header():
    """`--x: y` is a header field to the parser (not a delimiter of an open multipart):
    what follows it is still the part's header, and is measured as such."""
    dashed = b"--x: y\r\n"
    inner = b"--C\r\n" + TEXT
    nested = (HEAD + b'Content-Type: multipart/mixed; boundary="A"\r\n\r\n--A\r\n' + dashed
              + b'Content-Type: multipart/mixed; boundary="C"\r\n\r\n' + inner * 5
              + b"--C--\r\n--A--\r\n")
    assert_limits_are_exact(nested)
    with pytest.raises(MimeLimitExceeded, match="Content-Type header field longer"):
        check_limits(with_content_type(dashed + quoted_semicolons(60_000), "part header"),
                     MimeLimits())


@pytest.mark.parametrize("path", sorted((CORPUS / "mail").glob("*.eml")), ids=lambda p: p.stem)
def test_the_default_mime_field_caps_accept_every_corpus_mail(path: Path):
    check_limits(path.read_bytes(), MimeLimits())


def test_over_the_mime_limits_raises_and_maps_to_554_naming_the_reason():
    with pytest.raises(MimeLimitExceeded) as caught:
        parse_and_classify(nested_multipart(1000), MimeLimits())
    reply = reply_for_exception(caught.value)
    assert (reply.code, reply.enhanced) == (554, "5.6.0")
    assert "nesting deeper than 50" in reply.render()


def test_a_wide_message_is_refused_not_passed_unexamined():
    with pytest.raises(MimeLimitExceeded, match="more than 1000 MIME parts"):
        parse_and_classify(wide_multipart(5000), MimeLimits())


def test_header_limits_refuse_with_552():
    raw = HEAD + b"X: y\r\n" * 2000 + b"\r\nbody\r\n"
    with pytest.raises(HeaderLimitExceeded) as caught:
        parse_and_classify(raw, MimeLimits())
    reply = reply_for_exception(caught.value)
    assert (reply.code, reply.enhanced) == (552, "5.3.4") and "header fields" in reply.text


def test_message_within_limits_is_parsed_and_classified():
    raw = (CORPUS / "mail").glob("*.eml").__next__().read_bytes()
    message, classification = parse_and_classify(raw, MimeLimits())
    assert message.keys() and classification.notes is not None


def test_limits_are_read_from_smtp_settings(tmp_path):
    smtp = make_config(tmp_path, "outbox:x", {"smtp": {
        "max_mime_depth": 7, "max_mime_parts": 70,
        "max_header_line": 2000, "max_header_fields": 20}}).smtp
    assert MimeLimits.from_settings(smtp) == MimeLimits(7, 70, 2000, 20)
    assert MimeLimits.from_settings(make_config(tmp_path, "outbox:x").smtp) == MimeLimits()


def test_the_removed_pass_action_is_a_config_error_saying_so(tmp_path):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, "outbox:x", {"smtp": {"mime_limit_action": "pass"}})
    assert caught.value.key == "smtp.mime_limit_action" and "reject" in caught.value.problem


@pytest.mark.parametrize("values, key", [
    ({"mime_limit_action": "drop"}, "smtp.mime_limit_action"),
    ({"data_timeout": "0s"}, "smtp.data_timeout"),
    ({"max_data_in_flight": "10MiB", "max_message_size": "20MiB"}, "smtp.max_data_in_flight"),
    ({"max_sessions": 0}, "smtp.max_sessions"),
    ({"max_header_line": 500}, "smtp.max_header_line"),
])
def test_bad_limit_settings_are_config_errors_naming_the_key(tmp_path, values, key):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, "outbox:x", {"smtp": values})
    assert caught.value.key == key
