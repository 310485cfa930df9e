"""STARTTLS, AUTH and relay tricks over raw sockets (test_auth_and_startup.py has the basics).

Commands pipelined with STARTTLS are dropped, not run inside TLS (CVE-2011-0411 class); AUTH
guessing locks the client out, and guesses for one account from many clients lock that
account; a password check does not hold the other sessions; no address trick makes us an
open relay.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time

import pytest

from gateway.smtp.access import AUTH_TRY_LATER_REPLY, AUTH_LOCKED_REPLY
from gateway.store.passwords import hash_password
from tests.support.raw_sink import RawClient
from tests.support.tls import write_self_signed

INTERNAL_SENDER = "somu@city.example.lg.jp"
EXTERNAL = "tanaka@partner.example.com"
GOOD_PLAIN = base64.b64encode(b"\x00scanner\x00correct horse")
BAD_PLAIN = base64.b64encode(b"\x00scanner\x00wrong guess")
UNKNOWN_PLAIN = base64.b64encode(b"\x00nobody\x00correct horse")


@pytest.fixture
def tls_gateway(tmp_path, start_gateway):
    """STARTTLS and AUTH offered; loopback is NOT an allowed client, so only AUTH lets us relay."""
    return start_tls_gateway(tmp_path, start_gateway)


def start_tls_gateway(tmp_path, start_gateway, **smtp):
    cert, key = write_self_signed(tmp_path)
    users = tmp_path / "users"
    users.write_text(f"scanner:{hash_password('correct horse')}\n")
    running = start_gateway({"smtp": {
        "tls_cert": str(cert), "tls_key": str(key), "auth_users_file": str(users),
        "allowed_clients": ["192.0.2.0/24"], **smtp,
    }})
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return running, context


def greet(client: RawClient) -> None:
    assert client.reply()[0] == 220
    assert client.command(b"EHLO client.test")[0] == 250


def upgrade(client: RawClient, context: ssl.SSLContext) -> None:
    assert client.command(b"STARTTLS")[0] == 220
    client.starttls(context)


# -- STARTTLS ------------------------------------------------------------------------------------


def test_commands_pipelined_with_starttls_are_discarded_not_run_inside_tls(tls_gateway):
    running, context = tls_gateway
    with RawClient(running.port) as client:
        greet(client)
        client.send(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<injected@attacker.example>\r\n")
        assert client.reply()[0] == 220
        client.starttls(context)
        # Had the injected EHLO run inside TLS, its 250 would come first and MAIL would be accepted.
        code, text = client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())
        assert (code, text) == (503, b"503 5.5.1 Error: send HELO first")
        assert client.command(b"EHLO client.test")[0] == 250
        # Had the injected MAIL run, this one would be refused as nested.
        assert client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())[0] == 250


def test_a_transaction_begun_before_starttls_does_not_survive_the_upgrade(tls_gateway):
    running, context = tls_gateway
    with RawClient(running.port) as client:
        greet(client)
        assert client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())[0] == 250
        upgrade(client, context)
        assert client.command(b"EHLO client.test")[0] == 250
        assert client.command(f"RCPT TO:<{EXTERNAL}>".encode()) == (503, b"503 5.5.1 Error: need MAIL command")


def test_auth_login_without_tls_is_refused_538_before_any_challenge(tls_gateway):
    running, _ = tls_gateway
    with RawClient(running.port) as client:
        greet(client)
        code, text = client.command(b"AUTH LOGIN " + base64.b64encode(b"scanner"))
        assert code == 538 and text.startswith(b"538 5.7.11 Encryption required")
        assert client.command(b"NOOP")[0] == 250  # no 334: no password was asked for in the clear


# -- AUTH guessing -------------------------------------------------------------------------------


def tls_session(running, context: ssl.SSLContext, source: str | None = None) -> RawClient:
    client = RawClient(running.port, source=source)
    greet(client)
    upgrade(client, context)
    assert client.command(b"EHLO client.test")[0] == 250
    return client


def test_five_failed_auths_lock_the_client_out_and_it_is_disconnected(tls_gateway, sink):
    running, context = tls_gateway
    with tls_session(running, context) as client:
        for _ in range(3):
            assert client.command(b"AUTH PLAIN " + BAD_PLAIN)[0] == 535
    with tls_session(running, context) as client:  # a new session does not reset the count
        for _ in range(2):
            assert client.command(b"AUTH PLAIN " + BAD_PLAIN)[0] == 535
        # Locked: even the right password is refused without being checked, and we hang up.
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN) == (421, AUTH_LOCKED_REPLY.encode())
        assert client.rest() == b""
    with tls_session(running, context) as client:
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN)[0] == 421
        assert client.rest() == b""
    assert sink.messages == []


def test_configured_failure_limit_and_window_are_the_ones_applied(tmp_path, start_gateway):
    running, context = start_tls_gateway(tmp_path, start_gateway, auth_max_failures=2,
                                         auth_failure_window="1m")
    with tls_session(running, context) as client:
        for _ in range(2):
            assert client.command(b"AUTH PLAIN " + BAD_PLAIN)[0] == 535
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN)[0] == 421
    running.clock.advance(minutes=2)  # the gateway's clock: the window has passed
    with tls_session(running, context) as client:
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN)[0] == 235


def test_a_successful_auth_still_relays_after_fewer_failures_than_the_limit(tls_gateway, sink):
    running, context = tls_gateway
    with tls_session(running, context) as client:
        for _ in range(4):
            assert client.command(b"AUTH PLAIN " + BAD_PLAIN)[0] == 535
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN)[0] == 235
        assert client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())[0] == 250
        assert client.command(f"RCPT TO:<{EXTERNAL}>".encode())[0] == 250


def test_failures_for_one_account_from_many_clients_lock_that_account_known_or_not(tls_gateway,
                                                                                   sink):
    running, context = tls_gateway
    # Ten clients, two failures each (under the per-client limit of 5): ten for "scanner", an
    # existing account, and ten for "nobody", which does not exist.
    for number in range(10):
        with tls_session(running, context, source=f"127.0.0.{number + 2}") as client:
            assert client.command(b"AUTH PLAIN " + BAD_PLAIN)[0] == 535
            assert client.command(b"AUTH PLAIN " + UNKNOWN_PLAIN)[0] == 535
    with tls_session(running, context, source="127.0.0.50") as client:  # a fresh client
        locked = AUTH_TRY_LATER_REPLY.encode()
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN) == (454, locked)  # not even checked
        assert client.command(b"AUTH PLAIN " + UNKNOWN_PLAIN) == (454, locked)  # the same answer
        other = base64.b64encode(b"\x00printer\x00guess")
        assert client.command(b"AUTH PLAIN " + other)[0] == 535  # other names are not locked
        assert client.command(b"NOOP")[0] == 250  # a temporary refusal: the session goes on
    running.clock.advance(minutes=15)  # the account window has passed
    with tls_session(running, context, source="127.0.0.51") as client:
        assert client.command(b"AUTH PLAIN " + GOOD_PLAIN)[0] == 235
    assert AUTH_TRY_LATER_REPLY.startswith("454 4.7.0 ")
    assert sink.messages == []


def test_password_checks_do_not_hold_the_other_sessions(tmp_path, start_gateway):
    """scrypt takes ~100 ms a check: on the event loop, every other session would wait."""
    running, context = start_tls_gateway(tmp_path, start_gateway, auth_max_failures=1000,
                                         auth_max_failures_per_account=1000)
    with tls_session(running, context, source="127.0.0.2") as guesser, \
            tls_session(running, context, source="127.0.0.3") as bystander:
        guessing = threading.Event()
        guessing.set()

        def guess() -> None:
            try:
                for _ in range(10):
                    assert guesser.command(b"AUTH PLAIN " + BAD_PLAIN)[0] == 535
            finally:
                guessing.clear()

        worker = threading.Thread(target=guess)
        worker.start()
        gaps = []
        while guessing.is_set():
            started = time.perf_counter()
            assert bystander.command(b"NOOP")[0] == 250
            gaps.append(time.perf_counter() - started)
            time.sleep(0.002)  # a steady bystander, not a flood of samples waiting for an outlier
        worker.join()
    assert max(gaps) < 0.05, f"slowest NOOP {max(gaps) * 1000:.0f} ms of {len(gaps)}"
    assert len(gaps) >= 20  # ten checks of ~100 ms each: the bystander kept going meanwhile


# -- no open relay -------------------------------------------------------------------------------

RELAY_TRICKS = {
    "percent hack": ("<tanaka%partner.example.com@city.example.lg.jp>", 554),
    "percent hack outward": ("<somu%city.example.lg.jp@partner.example.com>", 554),
    "source route": ("<@city.example.lg.jp:tanaka@partner.example.com>", 554),
    "source route list": ("<@gw.test,@city.example.lg.jp:tanaka@partner.example.com>", 554),
    "quoted local part": ('<"tanaka@partner.example.com"@city.example.lg.jp>', 554),
    "bang path": ("<partner.example.com!tanaka@city.example.lg.jp>", 554),
    "address literal": ("<somu@[127.0.0.1]>", 554),
    "upper-case domain": ("<SOMU@CITY.EXAMPLE.LG.JP>", 554),
    "plain internal": (f"<{INTERNAL_SENDER}>", 554),
    "no angle brackets": ("tanaka@partner.example.com", 554),
    # Not even an address: aiosmtpd refuses the syntax before our relay check runs.
    "two at signs": ("<tanaka@partner.example.com@city.example.lg.jp>", 553),
    "trailing dot": ("<tanaka@partner.example.com.>", 553),
}


@pytest.fixture
def closed_gateway(start_gateway):
    """No AUTH, and loopback is not an allowed client: nothing may be relayed from here."""
    return start_gateway({"smtp": {"allowed_clients": ["192.0.2.0/24"]}})


@pytest.mark.parametrize(("recipient", "code"), RELAY_TRICKS.values(), ids=RELAY_TRICKS.keys())
def test_no_address_trick_relays_for_a_client_that_is_not_allowed(recipient, code, closed_gateway, sink):
    with RawClient(closed_gateway.port) as client:
        greet(client)
        assert client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())[0] == 250
        refused, text = client.command(f"RCPT TO:{recipient}".encode())
        assert refused == code
        assert text.startswith(b"554 5.7.1 " if code == 554 else b"553 5.1.3 ")
        assert client.command(b"DATA")[0] == 503
    assert sink.messages == []


def test_a_proxy_or_xclient_line_does_not_make_a_client_allowed(closed_gateway, sink):
    with RawClient(closed_gateway.port) as client:
        greet(client)
        assert client.command(b"PROXY TCP4 192.0.2.10 192.0.2.1 25000 25")[0] == 500
        assert client.command(b"XCLIENT ADDR=192.0.2.10")[0] == 500
        assert client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())[0] == 250
        assert client.command(f"RCPT TO:<{EXTERNAL}>".encode())[0] == 554


def test_allowed_client_percent_goes_on_as_given_and_a_source_route_is_dropped(start_gateway, sink):
    """RFC 5321 App. C: a relay may ignore the route and send to the final mailbox (aiosmtpd does,
    as Postfix does); `%` means something only to the final domain, so it travels unchanged."""
    running = start_gateway()  # loopback is an allowed client by default
    with RawClient(running.port) as client:
        greet(client)
        assert client.command(f"MAIL FROM:<{INTERNAL_SENDER}>".encode())[0] == 250
        assert client.command(b"RCPT TO:<kimura%partner.example.com@vendor.example.net>")[0] == 250
        assert client.command(b"RCPT TO:<@relay.example,@other.example:tanaka@partner.example.com>")[0] == 250
        assert client.command(b"DATA")[0] == 354
        client.send(b"From: somu@city.example.lg.jp\r\nSubject: routes\r\n\r\nhello\r\n.\r\n")
        assert client.reply()[0] == 250
    (message,) = sink.messages
    assert message.rcpt_tos == ["kimura%partner.example.com@vendor.example.net", EXTERNAL]
