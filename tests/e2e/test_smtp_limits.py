"""Resource limits on the SMTP side, over raw sockets: sessions, timeouts, the DATA budget, and
MIME and header structure caps (issue 6, point 4)."""

from __future__ import annotations

import select
import smtplib
import socket
import ssl
import time

from tests.support.running import send
from tests.support.tls import write_self_signed

SENDER, EXTERNAL = "somu@city.example.lg.jp", "tanaka@partner.example.com"
HEAD = b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\nSubject: t\r\n"


class RawClient:
    """SMTP by hand, so a test can stop, stall or misbehave at any byte."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 20):
        self.conn = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.reader = self.conn.makefile("rb")

    def reply(self) -> bytes:
        """One whole reply (its last line), or b"" when the server has closed."""
        line = self.reader.readline()
        while line[3:4] == b"-":
            line = self.reader.readline()
        return line

    def command(self, text: str) -> bytes:
        self.conn.sendall(text.encode() + b"\r\n")
        return self.reply()

    def start_data(self, mail_options: str = "", greeted: bool = False) -> bytes:
        if not greeted:
            assert self.reply().startswith(b"220 ")
        commands = ("EHLO raw.test", f"MAIL FROM:<{SENDER}>{mail_options}", f"RCPT TO:<{EXTERNAL}>")
        for text in commands:
            assert self.command(text).startswith(b"2"), text
        return self.command("DATA")

    def closed(self) -> bool:
        return self.reader.readline() == b""

    def close(self) -> None:
        self.reader.close()
        self.conn.close()


def greeting_after_retries(port: int, seconds: float = 5) -> bytes:
    """The server frees a slot when it sees the close: allow it a moment."""
    deadline = time.monotonic() + seconds
    while True:
        client = RawClient(port)
        greeting = client.reply()
        client.close()
        if greeting.startswith(b"220") or time.monotonic() > deadline:
            return greeting
        time.sleep(0.05)


def session_after_retries(port: int, seconds: float = 5) -> smtplib.SMTP:
    """An SMTP session once a slot is free: the last one closed (a probe's, say) frees its slot
    when the server has seen the close, which may come after this connection is accepted."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return smtplib.SMTP("127.0.0.1", port, timeout=10)
        except smtplib.SMTPConnectError as refused:
            if refused.smtp_code != 421 or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def test_connection_over_the_global_cap_gets_421_and_a_closed_slot_is_free_again(start_gateway):
    running = start_gateway({"smtp": {"max_sessions": 3}})
    held = [RawClient(running.port) for _ in range(3)]
    assert all(c.reply().startswith(b"220 ") for c in held)
    over = RawClient(running.port)
    assert over.reply() == b"421 4.7.0 gw.test too many connections, try again later\r\n"
    assert over.closed()
    held.pop().close()
    assert greeting_after_retries(running.port).startswith(b"220 ")
    for client in held + [over]:
        client.close()


def test_per_client_cap_refuses_one_address_while_another_is_served(start_gateway):
    running = start_gateway({"smtp": {"max_sessions_per_client": 2}})
    held = [RawClient(running.port) for _ in range(2)]
    assert all(c.reply().startswith(b"220 ") for c in held)
    same = RawClient(running.port)
    assert same.reply().startswith(b"421 4.7.0 gw.test too many connections")
    other = RawClient(running.port, source="127.0.0.2")
    assert other.reply().startswith(b"220 ")
    for client in held + [same, other]:
        client.close()


def test_refused_connections_hold_no_slot(start_gateway):
    running = start_gateway({"smtp": {"max_sessions": 1}})
    first = RawClient(running.port)
    assert first.reply().startswith(b"220 ")
    for _ in range(20):
        refused = RawClient(running.port)
        assert refused.reply().startswith(b"421 ")
        refused.close()
    first.close()
    assert greeting_after_retries(running.port).startswith(b"220 ")


def test_a_session_upgraded_with_starttls_holds_one_slot_and_frees_it(
    tmp_path, sink, start_gateway
):
    cert, key = write_self_signed(tmp_path)
    tls = {"tls_cert": str(cert), "tls_key": str(key)}
    running = start_gateway({"smtp": {"max_sessions": 1, **tls}})
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    for round_number in range(3):
        with session_after_retries(running.port) as client:
            client.starttls(context=context)
            client.ehlo("client.test")
            refused = RawClient(running.port)
            assert refused.reply().startswith(b"421 4.7.0")  # the one slot is taken
            refused.close()
            body = HEAD + b"\r\nover TLS %d\r\n" % round_number
            assert client.sendmail(SENDER, [EXTERNAL], body) == {}
        assert greeting_after_retries(running.port).startswith(b"220 ")
    assert len(sink.wait_for(3)) == 3


def test_silent_client_gets_421_at_the_idle_timeout_then_is_closed(start_gateway):
    running = start_gateway({"smtp": {"timeout": "1s"}})
    client = RawClient(running.port)
    assert client.reply().startswith(b"220 ")
    assert client.command("EHLO raw.test").startswith(b"250 ")
    started = time.monotonic()
    assert client.reply() == b"421 4.4.2 gw.test Error: timeout exceeded\r\n"
    assert client.closed() and 0.8 < time.monotonic() - started < 5
    client.close()


def test_slowloris_data_is_cut_at_the_data_timeout_with_421(sink, start_gateway):
    running = start_gateway({"smtp": {"timeout": "30s", "data_timeout": "1500ms"}})
    client = RawClient(running.port)
    assert client.start_data().startswith(b"354 ")
    started = time.monotonic()
    for _ in range(100):  # one short line every 0.2 s: never idle, never done
        client.conn.sendall(b"x\r\n")
        if select.select([client.conn], [], [], 0.2)[0]:
            break
    assert client.reply().startswith(b"421 4.4.2 gw.test Error: DATA not complete within 1.5")
    assert client.closed() and 1.3 < time.monotonic() - started < 8
    client.close()
    assert sink.messages == []


def test_data_that_keeps_coming_is_not_idle_even_past_the_idle_timeout(sink, start_gateway):
    running = start_gateway({"smtp": {"timeout": "1s", "data_timeout": "30s"}})
    client = RawClient(running.port)
    assert client.start_data().startswith(b"354 ")
    client.conn.sendall(HEAD + b"\r\n")
    for _ in range(12):  # 2.4 s of DATA, a line every 0.2 s
        client.conn.sendall(b"still typing\r\n")
        time.sleep(0.2)
    client.conn.sendall(b".\r\n")
    assert client.reply().startswith(b"250 ")
    assert len(sink.wait_for(1)) == 1
    client.close()


def test_time_the_relay_takes_is_not_counted_as_client_idleness(sink, start_gateway):
    running = start_gateway({"smtp": {"timeout": "1s"}})
    sink.delay_next("DATA", 2.0)
    code, _ = send(running.port, SENDER, [EXTERNAL], HEAD + b"\r\nslow next hop\r\n")
    assert code == 250 and len(sink.wait_for(1)) == 1


def budget_config() -> dict:
    return {"smtp": {"max_data_in_flight": "1MiB", "max_message_size": "1MiB"}}


def test_data_over_the_declared_budget_gets_451_at_data_and_fits_once_freed(sink, start_gateway):
    running = start_gateway(budget_config())
    holder = RawClient(running.port)
    assert holder.start_data(" SIZE=900000").startswith(b"354 ")
    holder.conn.sendall(HEAD + b"\r\n")
    late = RawClient(running.port)
    refusal = late.start_data(" SIZE=300000")
    assert refusal == b"451 4.3.2 Too much mail in transit, try again later\r\n"
    holder.conn.sendall(b"x" * 998 + b"\r\n.\r\n")
    assert holder.reply().startswith(b"250 ")
    assert late.command("RSET").startswith(b"250")
    assert late.start_data(" SIZE=300000", greeted=True).startswith(b"354 ")
    late.conn.sendall(HEAD + b"\r\nnow it fits\r\n.\r\n")
    assert late.reply().startswith(b"250 ")
    assert len(sink.wait_for(2)) == 2
    holder.close()
    late.close()


def test_data_beyond_the_announced_size_is_read_to_the_end_and_refused_with_451(
    sink, start_gateway
):
    running = start_gateway(budget_config())
    holder = RawClient(running.port)
    assert holder.start_data(" SIZE=900000").startswith(b"354 ")
    liar = RawClient(running.port)
    assert liar.start_data(" SIZE=1000").startswith(b"354 ")
    liar.conn.sendall(HEAD + b"\r\n" + (b"y" * 998 + b"\r\n") * 300 + b".\r\n")
    assert liar.reply().startswith(b"451 4.3.2 ")
    assert liar.command("NOOP").startswith(b"250")  # the session goes on
    holder.conn.sendall(HEAD + b"\r\nsmall\r\n.\r\n")
    assert holder.reply().startswith(b"250 ")
    assert [m.data for m in sink.wait_for(1)] == [HEAD + b"\r\nsmall\r\n"]
    holder.close()
    liar.close()


def test_data_without_announced_size_is_admitted_for_the_largest_message(sink, start_gateway):
    running = start_gateway(budget_config())  # budget = one largest message
    first = RawClient(running.port)
    assert first.start_data().startswith(b"354 ")
    second = RawClient(running.port)
    assert second.start_data(" SIZE=10").startswith(b"451 4.3.2 ")
    first.conn.sendall(HEAD + b"\r\nfirst\r\n.\r\n")
    assert first.reply().startswith(b"250 ")
    assert second.command("RSET").startswith(b"250")
    assert second.start_data(greeted=True).startswith(b"354 ")
    second.conn.sendall(HEAD + b"\r\nsecond\r\n.\r\n")
    assert second.reply().startswith(b"250 ")
    assert len(sink.wait_for(2)) == 2
    first.close()
    second.close()


def test_dot_stuffing_and_long_lines_survive_the_gateways_own_data_reader(sink, start_gateway):
    running = start_gateway()
    client = RawClient(running.port)
    assert client.start_data().startswith(b"354 ")
    client.conn.sendall(HEAD + b"\r\n..x\r\n" + b"z" * 20000 + b"\r\n.\r\n")
    assert client.reply().startswith(b"250 ")
    assert sink.wait_for(1)[0].data == HEAD + b"\r\n.x\r\n" + b"z" * 20000 + b"\r\n"
    client.close()


def nested_multipart(depth: int) -> bytes:
    opening = [b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (i, i)
               for i in range(depth)]
    closing = [b"--b%d--\r\n" % i for i in reversed(range(depth))]
    return HEAD + b"".join(opening) + b"Content-Type: text/plain\r\n\r\nhi\r\n" + b"".join(closing)


def test_thousand_deep_multipart_is_refused_with_554_naming_the_depth(sink, start_gateway):
    running = start_gateway()
    code, text = send(running.port, SENDER, [EXTERNAL], nested_multipart(1000))
    assert (code, text[:5]) == (554, "5.6.0") and "nesting deeper than 50" in text
    assert sink.messages == []


def test_a_wide_message_is_refused_naming_the_part_limit(sink, start_gateway):
    running = start_gateway()
    wide = HEAD + b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n" + (
        b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 100_000) + b"--B--\r\n"
    code, text = send(running.port, SENDER, [EXTERNAL], wide)
    assert (code, text[:5]) == (554, "5.6.0") and "more than 1000 MIME parts" in text
    assert sink.messages == []


def test_too_many_header_fields_are_refused_with_552(sink, start_gateway):
    running = start_gateway({"smtp": {"max_header_fields": 100}})
    too_many = HEAD + b"X-Tag: t\r\n" * 98 + b"\r\nbody\r\n"
    code, text = send(running.port, SENDER, [EXTERNAL], too_many)
    assert (code, text[:5]) == (552, "5.3.4") and "101 header fields, limit 100" in text
    at_limit = HEAD + b"X-Tag: t\r\n" * 97 + b"\r\nb\r\n"
    assert send(running.port, SENDER, [EXTERNAL], at_limit)[0] == 250
    assert len(sink.wait_for(1)) == 1


def test_a_megabyte_content_type_of_quoted_semicolons_gets_554_at_once_and_serving_goes_on(
        sink, start_gateway):
    """compat32 splits parameters in time quadratic in the ';' of a value (CPython gh-136063):
    this header held the GIL for minutes. Now the structure scan refuses it, counting bytes."""
    running = start_gateway()
    semicolons = [b";" * 4000] * 250  # 1,000,000 quoted ';', folded: no line over 8 KB
    hostile = (HEAD + b'Content-Type: multipart/mixed; boundary="B"; x="'
               + b"\r\n ".join(semicolons) + b'"\r\n\r\n--B\r\n'
               + b"Content-Type: text/plain\r\n\r\nhi\r\n--B--\r\n")
    started = time.monotonic()
    code, text = send(running.port, SENDER, [EXTERNAL], hostile)
    elapsed = time.monotonic() - started
    print(f"{len(hostile)} bytes, 1,000,000 quoted ';': {code} {text} in {elapsed:.2f} s")
    assert (code, text[:5]) == (554, "5.6.0")
    assert "Content-Type header field longer than 16384 bytes" in text
    assert elapsed < 5  # well under a second alone; the machine is shared
    assert send(running.port, SENDER, [EXTERNAL], HEAD + b"\r\nhello\r\n")[0] == 250
    assert len(sink.wait_for(1)) == 1
