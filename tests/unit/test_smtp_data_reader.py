"""The DATA reader's pieces: it reads in runs ending at ".\\r\\n", so line lengths are measured
across runs, and the transparency dots come off at the end."""

from __future__ import annotations

from gateway.smtp.server import _longest_line, _open_line_length, _unstuffed


def test_data_reader_helpers_measure_lines_across_runs_and_unstuff_dots() -> None:
    assert _longest_line(b"abc", 5) == 8  # a run with no line end continues the open line
    assert _longest_line(b"ab\r\ncdef\r\ngh", 1) == 6  # "cdef\r\n"
    assert _longest_line(b"ab\r\ngh", 10) == 14  # the open line finished by this run
    assert _open_line_length(b"ab\r\ncd", 7) == 2 and _open_line_length(b"cd", 7) == 9
    assert _unstuffed(b"..a\r\n.b\r\nc.\r\n") == b".a\r\nb\r\nc.\r\n"


def test_a_bare_lf_or_cr_ends_a_line_when_measuring_it() -> None:
    """Each line end is counted as the CRLF the line leaves with."""
    assert _longest_line(b"ab\ncdef\ngh", 1) == 6  # "cdef\n"
    assert _longest_line(b"ab\rcdef\rgh", 1) == 6
    assert _longest_line(b"ab\r\ncd\nefgh\rij", 0) == 6  # mixed ends: "efgh\r"
    assert _longest_line(b"x" * 76 + b"\n" + b"y" * 76 + b"\n", 0) == 78
    assert _open_line_length(b"ab\ncd", 7) == 2 and _open_line_length(b"ab\rcde", 7) == 3
    assert _open_line_length(b"ab\r", 7) == 0 and _open_line_length(b"ab\n", 7) == 0


def test_the_quick_look_never_misses_a_line_over_the_limit() -> None:
    """_may_hold_a_line_over decides whether a run is measured line by line at all: it may say
    yes wrongly (a measure for nothing), never no wrongly (a long line let through)."""
    import random

    from gateway.smtp.server import _longest_line, _may_hold_a_line_over

    chance = random.Random(20261207)
    pieces = [b"a" * 5, b"a" * 17, b"\r\n", b"\n", b"\r", b"b" * 40, b"x"]
    for _ in range(20000):
        run = b"".join(chance.choice(pieces) for _ in range(chance.randint(1, 30)))
        limit, open_line = chance.randint(3, 80), chance.randint(0, 50)
        if _longest_line(run, open_line) > limit:
            assert _may_hold_a_line_over(run, open_line, limit), (run, limit, open_line)
