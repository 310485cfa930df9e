"""The wall clock stepped back and forward an hour while the gateway runs (an NTP correction, a
VM restored from a snapshot). Every deadline is an instant stored or held as UTC and compared
with the injected clock, so a step moves it by at most the step: nothing crashes, no wait is
negative or unbounded, no lock-out lasts for ever or ends before the clock (as stepped) reaches
its end. What is timed with time.monotonic or the event loop's clock (SMTP idle and DATA
timeouts, the inspection deadline, log durations) does not see the step at all.

Decided: a link's stored expires_at is never moved by a step; a step back lets a link that the
clock had just seen expire open again until the clock passes expires_at once more, unless the
purge has removed it meanwhile (then it stays gone)."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dkim
import pytest

from gateway.ops.housekeeping import purge
from gateway.outbound.dkim_keys import generate_dkim_key
from gateway.store.crypto import open_small
from gateway.web.security import make_csrf_token
from tests.support.clock import FakeClock
from tests.support.portal_harness import (
    CSRF_FIELD,
    MASTER_KEY,
    SAME_ORIGIN,
    SECRET,
    ChannelHarness,
    csrf_of,
    open_channel_harness,
)
from tests.support.running import corpus_mail, send

PASSWORD = "Qm7kV2p9Lx4A"
HOUR = timedelta(hours=1)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ChannelHarness]:
    yield from open_channel_harness(tmp_path)


def step(clock: FakeClock, delta: timedelta) -> None:
    clock.now += delta


async def try_password(client, issued, password: str, csrf: str | None = None):
    csrf = csrf if csrf is not None else await csrf_of(client, issued)
    response = await client.post(f"{issued.path}/password", allow_redirects=False,
                                 data={"csrf": csrf, "password": password}, headers=SAME_ORIGIN)
    await response.read()
    return response.status, response.headers.get("Retry-After")


def fresh_csrf(harness: ChannelHarness, issued) -> str:
    """The token a page opened now would carry (a locked page shows no form to take it from)."""
    return make_csrf_token(SECRET, issued.link_id, harness.clock())


def test_a_password_lock_out_moves_with_the_step_and_no_further(harness):
    issued = harness.add_one(password=PASSWORD)
    locked_at = harness.clock()

    async def scenario(client):
        page = await (await client.get(issued.path)).text()
        csrf = CSRF_FIELD.search(page).group(1)  # a page opened before the lock-out
        wrong = [(await try_password(client, issued, f"wrong-{n}", csrf))[0] for n in range(5)]
        step(harness.clock, -HOUR)
        # A form from before a step back looks issued in the future: reload it (403, not a lock)
        stale_form = await try_password(client, issued, PASSWORD, csrf)
        back = await try_password(client, issued, PASSWORD, fresh_csrf(harness, issued))
        step(harness.clock, HOUR + timedelta(minutes=14))  # locked_at + 14 min
        near_end = await try_password(client, issued, PASSWORD, csrf)
        step(harness.clock, timedelta(minutes=1))  # locked_at + 15 min: the lock-out is over
        after = await try_password(client, issued, PASSWORD)
        return wrong, stale_form, back, near_end, after

    wrong, stale_form, back, near_end, after = harness.run(scenario)

    assert wrong == [403, 403, 403, 403, 429]
    assert stale_form == (403, None)
    assert "csrf_expired" in [e.detail["reason"] for e in harness.events("download.refused")]
    assert back == (429, str(15 * 60 + 3600)), "the step back lengthens it by the step, no more"
    assert near_end == (429, "60")
    assert after[0] == 303, "over when the clock reaches its end"
    assert harness.db.password_guard(issued.link_id).locked_until is None
    assert harness.clock() == locked_at + timedelta(minutes=15)


def test_one_time_codes_expire_and_resend_by_the_stepped_clock_with_bounded_waits(harness):
    issued = harness.controlled(verify_recipient=True)[1][0]

    async def ask(client):
        csrf = await csrf_of(client, issued)
        response = await client.post(f"{issued.path}/otp", data={"csrf": csrf},
                                     headers=SAME_ORIGIN, allow_redirects=False)
        await response.read()
        return response.status, response.headers.get("Retry-After")

    async def type_code(client, code: str) -> int:
        csrf = await csrf_of(client, issued)
        response = await client.post(f"{issued.path}/otp/verify",
                                     data={"csrf": csrf, "code": code}, headers=SAME_ORIGIN,
                                     allow_redirects=False)
        await response.read()
        return response.status

    def mailed() -> str:
        item = harness.items("otp")[-1]
        return json.loads(open_small(MASTER_KEY, item.id.encode(), item.sealed))["code"]

    async def scenario(client):
        first = await ask(client)
        first_code = mailed()
        step(harness.clock, HOUR)
        expired = await type_code(client, first_code)
        second = await ask(client)  # an hour on: the resend interval has passed
        second_code = mailed()
        step(harness.clock, -HOUR)
        too_soon = await ask(client)
        accepted = await type_code(client, second_code)  # issued "later": still in its lifetime
        return first, expired, second, too_soon, accepted

    first, expired, second, too_soon, accepted = harness.run(scenario)

    assert first[0] == 303 and second[0] == 303
    assert expired == 403, "an hour on, the 10-minute code has expired"
    interval = harness.settings.otp_resend_interval
    assert too_soon == (429, str(int((interval + HOUR).total_seconds()))), \
        "after the step back, the wait is the resend interval plus the step"
    assert accepted == 303, "the newer code is within its lifetime by the stepped clock"


def test_the_guess_throttle_holds_through_a_step_back_and_ends_by_the_clock(harness):
    issued = harness.add_one()

    async def scenario(client):
        misses = [(await client.get(f"/d/{secrets.token_urlsafe(24)}")).status for _ in range(50)]
        throttled = await client.get(issued.path)
        step(harness.clock, -HOUR)
        back = await client.get(issued.path)
        step(harness.clock, HOUR + timedelta(minutes=10))
        later = await client.get(issued.path)
        return misses, throttled, back, later

    misses, throttled, back, later = harness.run(scenario)

    assert misses == [404] * 50
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "600"
    assert back.status == 429 and int(back.headers["Retry-After"]) == 600 + 3600
    assert later.status == 200


def test_a_step_never_moves_a_links_stored_expiry_and_a_purged_link_stays_gone(harness):
    issued = harness.add_one(lifetime=timedelta(days=1))
    expires_at = harness.db.transfer(issued.transfer_id).expires_at

    async def status(client) -> int:
        response = await client.get(issued.path)
        await response.read()
        return response.status

    async def scenario(client):
        seen = []
        step(harness.clock, -HOUR)
        seen.append(await status(client))
        harness.clock.now = expires_at - timedelta(seconds=1)
        seen.append(await status(client))
        harness.clock.now = expires_at + timedelta(seconds=1)
        seen.append(await status(client))
        step(harness.clock, -HOUR)  # decided: open again until the clock passes expires_at
        seen.append(await status(client))
        step(harness.clock, HOUR)
        purge(harness.db, harness.blobs, harness.clock())
        step(harness.clock, -HOUR)
        seen.append(await status(client))
        return seen

    assert harness.run(scenario) == [200, 200, 410, 200, 410]
    assert harness.db.transfer(issued.transfer_id) is None or \
        harness.db.transfer(issued.transfer_id).expires_at == expires_at


def signature_time(message: bytes) -> int:
    return int(re.search(rb"DKIM-Signature:.*?\bt=(\d+)", message, re.DOTALL).group(1))


def test_dkim_t_follows_the_stepped_clock_and_verifies_at_a_receiver_with_the_right_time(
    tmp_path, sink, start_gateway
):
    key = generate_dkim_key("city.example.lg.jp", "step", tmp_path, "ed25519-sha256")
    records = {key.txt_name.encode(): key.txt_value.encode()}
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))  # the receiver's now
    running = start_gateway(
        {"dkim": {"keys": [{"domain": "city.example.lg.jp", "selector": "step",
                            "key_file": str(key.key_path), "algorithm": "ed25519-sha256"}]},
         "policy": {"sender_receipt": False, "notify_sender": "never"}}, clock=clock)
    mail = corpus_mail("01_outlook_jis_aes256")
    rcpt = mail.rcpt_tos[0]

    times = []
    for delta in (timedelta(0), -HOUR, 2 * HOUR):  # right, an hour behind, an hour ahead
        step(clock, delta)
        raw = mail.raw.replace(b"Message-ID: <", f"Message-ID: <{len(times)}.".encode(), 1)
        assert send(running.port, mail.mail_from, [rcpt], raw)[0] == 250
        (message,) = sink.wait_for(len(times) + 1)[-1:]
        assert dkim.verify(message.data, dnsfunc=lambda name, timeout=5: records[name])
        times.append(signature_time(message.data) - int(clock().timestamp()))
    assert times == [0, 0, 0], "t= is the gateway's clock, stepped or not"
