"""The fuzzer's judgement of SMTP replies must be able to fail: a 4xx without cause, a 5xx without
a reason and no reply at all are flagged, and DATA is dot-stuffed only after CRLF. (The oracle
that looks into delivered copies runs 7-Zip and bsdtar: tests/e2e/test_fuzz_oracle.py.)"""

from __future__ import annotations

import pytest

from tests.fuzz.replies import Exchange, dot_stuffed, reply_problems


@pytest.mark.parametrize("code, text, problem", [
    (451, "4.3.0 Temporary local problem [a1b2c3]", "tempfail-without-cause"),
    (554, "Malformed MIME structure", "5xx-without-reason"),
    (554, "5.6.0", "5xx-without-reason"),
    (554, "5.6.0 [a1b2c3d4e5f6]", "5xx-without-reason"),
    (554, "4.6.0 Malformed MIME structure", "5xx-without-reason"),
    (554, "5.6.0 Malformed MIME structure, message cannot be checked [a1b2c3]", None),
    (250, "2.0.0 Ok: delivered [a1b2c3]", None),
])
def test_reply_checks_flag_tempfails_and_bare_refusals(code, text, problem):
    found = reply_problems(Exchange(replies=[("DATA end", code, text)], final=(code, text)))
    assert [prop for prop, _ in found] == ([problem] if problem else [])


def test_no_reply_is_a_hang_and_data_is_dot_stuffed_only_after_crlf():
    assert reply_problems(Exchange(problem="no reply within 60s at end of DATA"))[0][0] == "hang"
    assert dot_stuffed(b".a\r\n.b\n.c\r.d") == b"..a\r\n..b\n.c\r.d\r\n.\r\n"
