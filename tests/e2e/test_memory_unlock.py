"""Unlocking costs memory in proportion to a chunk, not to the archive: three PPAP mails whose AES
ZIPs hold 256 MiB of members each are opened by their password mails at once, and the real
`ppap-gateway serve` grows by less than 2 x the in-flight budget + 80 MB while it decrypts,
inflates and stores them; the links then serve the plain files. Reads the peak RSS (VmHWM) from
/proc, started again once the ZIP mails are in, so it counts what unlocking adds. An unlock the
budget cannot hold now waits for the sender's retry: `451 4.3.2` to the password mail, `503` to
the unlock form, and nothing opened meanwhile."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyzipper

from tests.support.memory import memory_kib, reset_peak, serving_worker
from gateway.sample import build_encrypted_zip
from tests.support.portal_http import download_once, manage_token, portal, unlock_form
from tests.support.ppap import SENDER, password_mail, zip_mail
from tests.support.processes import free_port, wait_listening
from tests.support.received import links_in
from tests.support.running import send
from tests.support.sink import RecordingSink

MIB = 1024 * 1024
MEMBER_SIZE = 64 * MIB
MEMBERS = 4  # 256 MiB of members per ZIP; its mail is about 18 MB
SENDERS = [f"somu{i}@city.example.lg.jp" for i in range(3)]  # one transfer each, opened at once
RECIPIENT = "tanaka@partner.example.com"
PASSWORD = "Kx7#pQ2m9w"
BUDGET = 32 * MIB  # smtp.max_data_in_flight, which unlocking is charged to as well
# The event loop, SQLite, allocator slack and the portal, whatever is being unlocked.
SLACK = 80 * MIB
RETRY_FOR = 40.0  # seconds a password mail is retried after a 4xx (the budget is full)


def member_content() -> bytes:
    """Mildly compressible bytes (mostly "a", a random few others; deflate gets about 1:19, under
    the ratio limit), made fast from the kernel's random bytes."""
    common = bytes(0x61 if value < 252 else 0x62 + (value & 3) for value in range(256))
    return os.urandom(MEMBER_SIZE).translate(common)


def encrypted_zip(content: bytes) -> bytes:
    out = io.BytesIO()
    with pyzipper.AESZipFile(out, "w", compression=pyzipper.ZIP_DEFLATED, compresslevel=1,
                             encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(PASSWORD.encode())
        for index in range(MEMBERS):
            archive.writestr(f"資料{index + 1}.dat", content)
    return out.getvalue()


def write_config(tmp_path: Path, port: int, portal_port: int, sink_port: int) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
hostname = "gw.test"
workers = 1  # the bound is per process; one worker holds the whole budget
internal_domains = ["city.example.lg.jp"]

[smtp]
listen = "127.0.0.1:{port}"
max_message_size = "{BUDGET}"
max_data_in_flight = "{BUDGET}"

[next_hop]
url = "smtp://127.0.0.1:{sink_port}"
starttls = "off"
timeout = "60s"

[storage]
data_dir = "{tmp_path / "data"}"

[portal]
public_url = "https://files.city.example.lg.jp"
listen = "127.0.0.1:{portal_port}"

[admin]
listen = "127.0.0.1:{free_port()}"
""", encoding="utf-8")
    return config


def send_password_mail(port: int, sender: str, replies: dict[str, list[tuple[int, str]]],
                       start: threading.Barrier) -> None:
    """The password mail, announcing its SIZE (as Postfix does), retried while it gets a 4xx."""
    data = password_mail([RECIPIENT], PASSWORD, sender=sender)
    start.wait()
    deadline = time.monotonic() + RETRY_FOR
    while True:
        code, text = send(port, sender, [RECIPIENT], data, (f"SIZE={len(data)}",))
        replies.setdefault(sender, []).append((code, text))
        if not 400 <= code < 500 or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def test_three_password_mails_opening_256_mib_each_at_once_stay_under_the_budget_bound(
    tmp_path,
):
    content = member_content()
    archive = encrypted_zip(content)
    port, portal_port = free_port(), free_port()
    replies: dict[str, list[tuple[int, str]]] = {}
    with RecordingSink() as sink:
        config = write_config(tmp_path, port, portal_port, sink.port)
        log = (tmp_path / "gateway.log").open("w")
        executable = Path(sys.executable).parent / "ppap-gateway"
        process = subprocess.Popen([str(executable), "serve", "--config", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, process)
            for sender in SENDERS:
                mail = zip_mail([RECIPIENT], archive, sender=sender)
                assert send(port, sender, [RECIPIENT], mail, (f"SIZE={len(mail)}",))[0] == 250
            link_mails = sink.wait_for(len(SENDERS), timeout=60)
            worker = serving_worker(process.pid, port)
            idle_kib = reset_peak(worker)
            start = threading.Barrier(len(SENDERS))
            threads = [threading.Thread(target=send_password_mail,
                                        args=(port, sender, replies, start))
                       for sender in SENDERS]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert process.poll() is None, "the gateway died"
            peak_kib = memory_kib(worker, "VmHWM")
            token = next(iter(links_in(link_mails[0].data)))
            downloaded = download_once(SimpleNamespace(gateway=SimpleNamespace(
                portal_port=portal_port)), token)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    assert {sender: tries[-1][0] for sender, tries in replies.items()} == dict.fromkeys(
        SENDERS, 250), replies
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(content).digest()
    members_mib = MEMBERS * MEMBER_SIZE * len(SENDERS) // MIB
    bound_kib = idle_kib + (2 * BUDGET + SLACK) // 1024
    print(f"unlocked {members_mib} MiB of members: idle {idle_kib // 1024} MiB, "
          f"peak {peak_kib // 1024} MiB, bound {bound_kib // 1024} MiB, "
          f"tries {[len(tries) for tries in replies.values()]}")
    assert peak_kib < bound_kib
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


def test_an_unlock_the_budget_cannot_hold_waits_for_the_retry(sink, start_gateway):
    running = start_gateway({"policy": {"sender_receipt": True}})
    archive = build_encrypted_zip({"見積書.txt": "金額 120,000 円\n".encode() * 50}, "Zq8!mT4s")
    assert send(running.port, SENDER, [RECIPIENT], zip_mail([RECIPIENT], archive))[0] == 250
    link = next(iter(links_in(sink.wait_for(1)[0].data)))
    token = manage_token(running, sink, 1)
    budget = running.gateway.in_flight
    taken = budget.limit - budget.used - 1024 * 1024  # DATA of a small mail still fits
    assert running.call(_take(budget, taken))
    mail = password_mail([RECIPIENT], "Zq8!mT4s")
    reply = send(running.port, SENDER, [RECIPIENT], mail, (f"SIZE={len(mail)}",))
    status, page, _ = unlock_form(running, token, "Zq8!mT4s")
    assert "見積書.zip" in portal(running, f"/d/{link}")[1], "still locked"
    running.call(_give_back(budget, taken))
    assert reply[0] == 451 and reply[1].startswith("4.3.2"), reply
    assert status == 503 and "混み合って" in page
    retried = send(running.port, SENDER, [RECIPIENT], mail, (f"SIZE={len(mail)}",))
    assert retried[0] == 250
    assert "見積書.txt" in portal(running, f"/d/{link}")[1]
    assert budget.used == 0


async def _take(budget, size: int) -> bool:
    return budget.take(size)  # in the gateway's loop, where the budget is used


async def _give_back(budget, size: int) -> None:
    budget.give_back(size)
