"""Every 4xx/5xx line we send carries an RFC 3463 enhanced status code, whoever wrote the reply."""

import re

import pytest

from gateway.smtp.server import with_enhanced_code

ENHANCED = re.compile(r"^[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3} \S")


@pytest.mark.parametrize("reply, expected", [
    ("500 Error: command \"FOO\" not recognized", "500 5.5.2 Error: command \"FOO\" not recognized"),
    ("501 Syntax: RCPT TO: <address>", "501 5.5.4 Syntax: RCPT TO: <address>"),
    ("502 EXPN not implemented", "502 5.5.1 EXPN not implemented"),
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("530 Must issue a STARTTLS command first", "530 5.7.0 Must issue a STARTTLS command first"),
    ("554 Transaction failed", "554 5.0.0 Transaction failed"),
    ("454 TLS not available", "454 4.7.0 TLS not available"),
    ("421 closing", "421 4.3.2 closing"),
    ("599 odd", "599 5.0.0 odd"),
    ("550-first line\r\n550 last line", "550-5.0.0 first line\r\n550 5.0.0 last line"),
])
def test_a_reply_without_a_code_gets_the_one_for_its_reply_code(reply, expected):
    assert with_enhanced_code(reply) == expected
    assert all(ENHANCED.match(line) for line in expected.split("\r\n"))


@pytest.mark.parametrize("reply", [
    "554 5.7.1 <a@b.example>: Relay access denied", "451 4.3.0 Temporary local problem [ab12]",
    "538 5.7.11 Encryption required for requested authentication mechanism",
    "250 2.0.0 Ok", "250 OK", "354 End data with <CR><LF>.<CR><LF>", "221 Bye",
])
def test_a_reply_with_a_code_or_a_success_is_left_alone(reply):
    assert with_enhanced_code(reply) == reply
