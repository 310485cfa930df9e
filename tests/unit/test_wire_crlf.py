"""wire.crlf_only against its definition (every CR and LF of the slice is part of a CRLF in it),
on random slices of random line ends, and crlf_line_endings on what it must mend."""

from __future__ import annotations

import random

from gateway.wire import crlf_line_endings, crlf_only


def _by_definition(data: bytes, start: int, end: int) -> bool:
    piece = data[start:end]
    crlf = piece.count(b"\r\n")
    return piece.count(b"\r") == crlf == piece.count(b"\n")


def test_crlf_only_agrees_with_its_definition_on_every_slice() -> None:
    rng = random.Random(7)
    verdicts = set()
    for _ in range(20_000):
        data = bytes(rng.choice(b"ab\r\n\r\n") for _ in range(rng.randrange(0, 12)))
        start = rng.randrange(0, len(data) + 1)
        end = rng.randrange(start, len(data) + 1)
        expected = _by_definition(data, start, end)
        verdicts.add(expected)
        assert crlf_only(data, start, end) == expected, (data, start, end)
        assert crlf_only(memoryview(data), start, end) == expected
    assert verdicts == {True, False}


def test_a_slice_starting_at_the_lf_of_a_crlf_has_a_bare_lf() -> None:
    assert not crlf_only(b"a\r\nb", 2, 4)
    assert crlf_only(b"a\r\nb", 0, 4)
    assert not crlf_only(b"a\r\nb", 0, 2)  # its CR without the LF after the slice


def test_bare_line_ends_are_mended_and_clean_data_is_returned_as_is() -> None:
    clean = b"To: a\r\n\r\nbody\r\n"
    assert crlf_line_endings(clean) is clean
    assert crlf_line_endings(b"a\nb\rc\r\r\nd") == b"a\r\nb\r\nc\r\nd"
