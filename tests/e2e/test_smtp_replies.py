"""Every refusal the listener sends carries an enhanced status code (RFC 3463), also the ones
aiosmtpd writes itself: driven over a raw socket through each kind of error."""

from __future__ import annotations

import re

from tests.support.raw_sink import RawClient

ENHANCED = re.compile(rb"^[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3} \S")
SENDER = b"somu@city.example.lg.jp"
RECIPIENT = b"tanaka@partner.example.com"

# (command, the reply code it must get)
SESSION = [
    (b"FOO", 500),  # command not recognised
    (b"", 500),  # bad syntax
    (b"\xff", 500),
    (b"X" * 600, 500),  # command line too long
    (b"HELO", 501),
    (b"MAIL FROM:<" + SENDER + b">", 503),  # HELO first
    (b"EHLO client.test", 250),
    (b"STARTTLS", 454),  # no certificate configured
    (b"AUTH PLAIN", 538),
    (b"RCPT TO:<" + RECIPIENT + b">", 503),  # need MAIL
    (b"DATA", 503),  # need RCPT
    (b"MAIL FROM:", 501),
    (b"MAIL FROM:<" + SENDER + b"> FOO=1", 555),
    (b"MAIL FROM:<" + SENDER + b"> BODY=9BIT", 501),
    (b"MAIL FROM:<" + SENDER + b"> SIZE=999999999999", 552),
    (b"MAIL FROM:<" + SENDER + b">", 250),
    (b"MAIL FROM:<other@city.example.lg.jp>", 503),  # nested MAIL
    (b"RCPT TO:<tanaka@partner.ex\tample.com>", 501),  # a TAB in the address
    (b"RCPT TO:<a@b@c>", 553),
    (b"RCPT TO:<" + RECIPIENT + b"> FOO=1", 555),
    (b"RCPT TO:<" + RECIPIENT + b">", 250),
    (b"DATA extra", 501),
    (b"EXPN staff", 502),
    (b"VRFY", 501),
    (b"RSET now", 501),
    (b"QUIT now", 501),
    (b"HELO client.test", 250),
    (b"AUTH PLAIN", 500),  # not offered without EHLO
]


def test_every_4xx_and_5xx_line_has_an_enhanced_status_code(start_gateway):
    running = start_gateway()
    refusals: list[bytes] = []
    with RawClient(running.port) as client:
        assert client.reply()[0] == 220
        for command, expected in SESSION:
            code, text = client.command(command)
            assert code == expected, (command[:40], text)
            if code >= 400:
                refusals += text.split(b"\n")
        # and in DATA: a line over the limit
        for command in (b"MAIL FROM:<" + SENDER + b">", b"RCPT TO:<" + RECIPIENT + b">", b"DATA"):
            client.command(command)
        client.send(b"Subject: long\r\n\r\n" + b"y" * 70000 + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 500
        refusals.append(text)
    assert len(refusals) == sum(1 for _, code in SESSION if code >= 400) + 1
    assert [line for line in refusals if not ENHANCED.match(line)] == []
