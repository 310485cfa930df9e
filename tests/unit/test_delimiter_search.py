"""The structure scan finds multipart delimiters by looking only at lines that hold a dash: it
must find exactly what the regex search it replaces finds, from any starting point."""

from __future__ import annotations

import random
import re

from gateway.pipeline.parse import _has_dashed_line, _next_line_match

DELIMITERS = re.compile(rb"^--(abc|ab)(--)?[ \t]*\r?$", re.MULTILINE)
PIECES = [b"--", b"abc", b"ab", b"\n", b"\r\n", b"x", b" ", b"--abc--", b"\r", b"-", b"\t"]


def test_finds_what_the_regex_search_finds_from_every_position():
    chance = random.Random(20261207)
    for _ in range(3000):
        raw = b"".join(chance.choice(PIECES) for _ in range(chance.randint(0, 60)))
        for position in range(len(raw) + 1):
            expected = DELIMITERS.search(raw, position)
            found = _next_line_match(DELIMITERS, raw, position)
            assert (found and found.span()) == (expected and expected.span()), (raw, position)


def test_text_full_of_dashed_lines_is_still_searched_to_its_end():
    raw = b"-x\r\n" * 1000 + b"--abc--\r\n"
    assert _next_line_match(DELIMITERS, raw, 0).start() == 4000


def test_a_line_starting_with_dashes_is_found_as_find_finds_it():
    chance = random.Random(7)
    for _ in range(3000):
        raw = b"".join(chance.choice(PIECES) for _ in range(chance.randint(0, 60)))
        for start in range(len(raw) + 1):
            end = chance.randint(start, len(raw))
            expected = raw.find(b"\n--", start, end) >= 0
            assert _has_dashed_line(raw, start, end) == expected, (raw, start, end)


def test_dashes_past_the_memchr_budget_are_still_looked_at():
    raw = b"a-b" * 100 + b"\n--x"
    assert _has_dashed_line(raw, 0, len(raw))
    assert not _has_dashed_line(raw, 0, len(raw) - 2)
