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
