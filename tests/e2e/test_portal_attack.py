"""The portal under attack (issue 6, point 8): a real gateway converts a real mail, and its
links are then scanned, brute-forced, guessed, attacked cross-site and asked for ranges over
real HTTP. The mass guessing runs in-process (aiohttp's test client) to stay fast."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets

import aiohttp
import pytest

from gateway.config import PortalSettings
from gateway.store.passwords import hash_token
from tests.support.portal_harness import PortalHarness
from tests.support.portal_http import CSRF, FILE_ID, Portal
from tests.support.received import body_text, links_in, password_in, texts_of
from tests.support.running import PUBLIC_URL, corpus_mail, send_corpus

MAIL = "01_outlook_jis_aes256"
PROXIES = {"portal": {"trusted_proxies": ["127.0.0.0/8"]}}
SCANNERS = {
    "Defender SafeLinks": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
                          "like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Outlook preview": "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; "
                       "Pro)",
    "Proofpoint URL Defense": "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
    "Mimecast": "Mozilla/5.0 (compatible; Mimecast URL Protect)",
    "Slackbot": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "curl": "curl/8.5.0",
}


def converted(sink, running) -> tuple[list[str], str]:
    """Send the corpus mail; return its link tokens and its attachment's SHA-256."""
    mail = corpus_mail(MAIL)
    assert send_corpus(running.port, mail)[0] == 250
    tokens = sorted({t for m in sink.wait_for(2) for t in links_in(m.data)})
    return tokens, mail.side["attachments"][0]["sha256"]


def link(running, token: str):
    return running.db.link_by_token_hash(hash_token(token))


def from_ip(address: str) -> dict[str, str]:
    return {"X_Forwarded_For": address}


# -- link scanners ------------------------------------------------------------------------------


def test_link_scanners_consume_nothing_and_the_human_still_downloads(sink, start_gateway):
    running = start_gateway({"policy": {"max_downloads": 1, "password": "sender-email"}})
    (token, _other), sha = converted(sink, running)
    portal = Portal(running)

    async def scan_all() -> list[tuple[str, str, int, int]]:
        url = f"{portal.base}/d/{token}"
        async with aiohttp.ClientSession() as session:
            async def scan(name: str, agent: str, method: str) -> tuple[str, str, int, int]:
                async with session.request(method, url, headers={"User-Agent": agent}) as r:
                    return name, method, r.status, len(await r.read())
            # Rapid repeats, in parallel, as a scanning farm does.
            return await asyncio.gather(*(scan(name, agent, method)
                                          for name, agent in SCANNERS.items()
                                          for method in ("GET", "HEAD") for _ in range(10)))

    results = asyncio.run(scan_all())

    assert {(status, method == "HEAD" and size == 0 or size > 0)
            for _name, method, status, size in results} == {(200, True)}
    scanned = link(running, token)
    assert scanned.download_count == 0
    assert running.db.password_guard(scanned.id).failures == 0
    kinds = [e.kind for e in running.db.events() if e.link_id == scanned.id]
    assert not [k for k in kinds if k.startswith(("download", "password", "otp"))]
    running.advance(minutes=2)  # the password goes to the sender
    password = next(password_in(body_text(m.data)) for m in sink.wait_for(4)
                    if m.rcpt_tos == [corpus_mail(MAIL).mail_from]
                    and "/m/" not in body_text(m.data))
    login = portal.post(token, "/password", {"csrf": portal.csrf(token), "password": password})
    cookie = login.headers["Set-Cookie"].split(";", 1)[0]
    download = portal.download(token, Cookie=cookie)
    assert download.status == 200 and hashlib.sha256(download.body).hexdigest() == sha
    assert link(running, token).download_count == 1


# -- password brute force -------------------------------------------------------------------


def test_password_brute_force_from_one_ip_is_locked_out_and_no_ip_gets_around_it(
        sink, start_gateway):
    running = start_gateway({"policy": {"password": "sender-email"}, **PROXIES})
    (token, other_token), _sha = converted(sink, running)
    portal = Portal(running)
    attacker, other = from_ip("198.51.100.7"), from_ip("203.0.113.9")
    running.advance(minutes=2)
    password = next(password_in(body_text(m.data)) for m in sink.wait_for(4)
                    if "/m/" not in body_text(m.data) and len(m.rcpt_tos) == 1
                    and m.rcpt_tos[0].endswith("city.example.lg.jp"))
    csrf = portal.csrf(token, **attacker)

    tries = [portal.post(token, "/password", {"csrf": csrf, "password": f"guess-{n:04d}"},
                         **attacker) for n in range(40)]
    from_elsewhere = portal.post(token, "/password", {"csrf": csrf, "password": "guess-x"},
                                 **other)
    right_while_locked = portal.post(token, "/password", {"csrf": csrf, "password": password},
                                     **other)

    assert [t.status for t in tries] == [403] * 4 + [429] * 36
    assert all(t.headers["Retry-After"] == "900" for t in tries[4:])
    assert from_elsewhere.status == 429 and right_while_locked.status == 429
    assert "Set-Cookie" not in right_while_locked.headers
    linked = link(running, token)
    # Past the lock, guesses are not even checked: only five were ever compared.
    kinds = [e.kind for e in running.db.events() if e.link_id == linked.id]
    assert kinds.count("password.failed") == 5 and kinds.count("password.locked") == 1
    assert all(e.detail["client_ip"] == "198.51.100.7" for e in running.db.events()
               if e.kind == "password.failed")
    # The lock is the link's: the other recipient's link is untouched.
    other_try = portal.post(other_token, "/password",
                            {"csrf": portal.csrf(other_token), "password": password})
    assert other_try.status == 303

    running.clock.advance(minutes=15)
    accepted = portal.post(token, "/password", {"csrf": portal.csrf(token), "password": password},
                           **other)
    assert accepted.status == 303 and "ppap_session=" in accepted.headers["Set-Cookie"]


# -- one-time code brute force --------------------------------------------------------------


def code_in(message) -> str:
    (code,) = re.findall(r"\b(\d{6})\b", "\n".join(texts_of(message.data)))
    return code


def test_code_brute_force_voids_the_code_and_code_requests_are_throttled_per_ip(
        sink, start_gateway):
    running = start_gateway({"policy": {"verify_recipient": True, "sender_receipt": False},
                             "portal": {"trusted_proxies": ["127.0.0.0/8"],
                                        "otp_per_client_per_hour": 3}})
    (token, other_token), _sha = converted(sink, running)
    portal = Portal(running)
    attacker, other = from_ip("198.51.100.7"), from_ip("203.0.113.9")
    csrf = portal.csrf(token, **attacker)
    assert portal.post(token, "/otp", {"csrf": csrf}, **attacker).status == 303
    (code_mail,) = sink.wait_for(3)[2:]
    assert code_mail.rcpt_tos == [link(running, token).recipient]
    code = code_in(code_mail)
    wrong = [c for c in (f"{n:06d}" for n in range(100)) if c != code]

    guesses = [portal.post(token, "/otp/verify", {"csrf": csrf, "code": c}, **attacker)
               for c in wrong[:30]]
    right_after = portal.post(token, "/otp/verify", {"csrf": csrf, "code": code}, **other)

    assert {g.status for g in guesses} == {403}
    assert "あと 1 回" in guesses[3].text and "使えなくなりました" in guesses[4].text
    assert right_after.status == 403 and "Set-Cookie" not in right_after.headers
    assert len([e for e in running.db.events() if e.kind == "otp.failed"]) == 5
    # New codes: one per link per minute, and only so many per client network per hour.
    assert portal.post(token, "/otp", {"csrf": csrf}, **attacker).status == 429
    running.advance(minutes=1, seconds=1)
    assert portal.post(token, "/otp", {"csrf": csrf}, **attacker).status == 303
    running.advance(minutes=1, seconds=1)
    other_csrf = portal.csrf(other_token, **attacker)
    assert portal.post(other_token, "/otp", {"csrf": other_csrf}, **attacker).status == 303
    running.advance(minutes=1, seconds=1)
    refused = portal.post(token, "/otp", {"csrf": csrf}, **attacker)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) > 3000
    # The recipient, elsewhere, still gets in with the newest code.
    assert portal.post(token, "/otp", {"csrf": csrf}, **other).status == 303
    recipient = link(running, token).recipient
    newest = code_in([m for m in sink.wait_for(6) if m.rcpt_tos == [recipient]][-1])
    verified = portal.post(token, "/otp/verify", {"csrf": csrf, "code": newest}, **other)
    assert verified.status == 303 and "ppap_verified=" in verified.headers["Set-Cookie"]


# -- guessing tokens ------------------------------------------------------------------------------

# The 10^5: one in-process request costs about 0.6 ms on the 2-core CI machine, so this
# takes about a minute — the one slow test in this file, kept at full size on purpose.
GUESSES = 100_000
ODD_TOKENS = ["x", "A" * 32, "A" * 4000, "%00", "..%2F..%2Fetc", "%E2%80%AE", "-_" * 16,
              secrets.token_hex(64), "ｔｏｋｅｎ"]


def test_a_hundred_thousand_guessed_tokens_get_byte_identical_404s_each_looked_up(tmp_path):
    harness = PortalHarness(tmp_path, settings=PortalSettings(
        public_url=PUBLIC_URL, max_unknown_tokens=GUESSES + 100))
    harness.add_one()
    looked_up: list[str] = []
    real_lookup = harness.db.link_by_token_hash

    def recording_lookup(token_hash: str):
        looked_up.append(token_hash)
        return real_lookup(token_hash)

    harness.db.link_by_token_hash = recording_lookup  # type: ignore[method-assign]
    guesses = [secrets.token_urlsafe(24) for _ in range(GUESSES)] + ODD_TOKENS

    async def scenario(client) -> set[tuple[int, bytes, tuple]]:
        seen = set()
        for guess in guesses:
            response = await client.get(f"/d/{guess}")
            headers = tuple(sorted((k, v) for k, v in response.headers.items() if k != "Date"))
            seen.add((response.status, await response.read(), headers))
        return seen

    (only,) = harness.run(scenario)
    harness.close()

    assert only[0] == 404
    assert len(looked_up) == len(guesses)  # no shape is turned away before the lookup
    assert {h for h in looked_up} >= {hash_token(g) for g in guesses[:100]}


def test_guessing_from_one_ip_is_throttled_after_fifty_misses_and_only_that_ip(
        sink, start_gateway):
    running = start_gateway(PROXIES)
    (token, _other), _sha = converted(sink, running)
    portal = Portal(running)
    attacker = from_ip("198.51.100.7")

    statuses = [portal.request(f"/d/{secrets.token_urlsafe(24)}", **attacker).status
                for _ in range(60)]
    real_for_attacker = portal.request(f"/d/{token}", **attacker)
    real_for_others = portal.request(f"/d/{token}", **from_ip("203.0.113.9"))

    assert statuses == [404] * 50 + [429] * 10
    assert real_for_attacker.status == 429 and real_for_attacker.headers["Retry-After"] == "600"
    assert real_for_others.status == 200
    running.clock.advance(minutes=10)
    assert portal.request(f"/d/{token}", **attacker).status == 200


# -- cross-site POSTs ----------------------------------------------------------------------------


def test_cross_site_posts_are_refused_and_count_nothing(sink, start_gateway):
    running = start_gateway()
    (token, _other), sha = converted(sink, running)
    portal = Portal(running)
    page = portal.request(f"/d/{token}").text
    action = f"/d/{token}/f/{FILE_ID.search(page).group(1)}"
    good = {"csrf": CSRF.search(page).group(1)}
    evil = "https://evil.example"

    attempts = {
        "another site's Origin": portal.request(action, good, Origin=evil),
        "another site's Referer": portal.request(action, good, Referer=f"{evil}/page"),
        "a sibling subdomain": portal.request(action, good,
                                              Origin="https://evil.city.example.lg.jp"),
        "Sec-Fetch-Site cross-site": portal.request(action, good, Origin="null",
                                                    Sec_Fetch_Site="cross-site"),
        "no CSRF token": portal.request(action, {}, Origin=portal.base),
        "a forged CSRF token": portal.request(action, {"csrf": "1.AAAA"}, Origin=portal.base),
    }

    assert {name: reply.status for name, reply in attempts.items()} == \
        {name: 403 for name in attempts}
    assert all(reply.body.startswith(b"<!doctype html>") for reply in attempts.values())
    assert link(running, token).download_count == 0
    served = portal.request(action, good, Origin=portal.base, Sec_Fetch_Site="same-origin")
    assert served.status == 200 and hashlib.sha256(served.body).hexdigest() == sha


# -- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ranges", ["bytes=0-9", "bytes=-16", "bytes=100-", "bytes=0-0,5-9"])
def test_range_requests_are_ignored_with_the_whole_file_and_no_accept_ranges(
        sink, start_gateway, ranges):
    running = start_gateway()
    (token, _other), sha = converted(sink, running)
    portal = Portal(running)

    download = portal.download(token, Range=ranges)
    page = portal.request(f"/d/{token}", Range=ranges)

    assert download.status == 200 and hashlib.sha256(download.body).hexdigest() == sha
    assert download.headers["Content-Length"] == str(len(download.body))
    for reply in (download, page):
        assert "Accept-Ranges" not in reply.headers and "Content-Range" not in reply.headers
    assert page.status == 200
