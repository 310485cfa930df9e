"""`ppap-gateway serve` as operators run it: worker processes on shared sockets under a
supervisor that replaces a dead worker, drains on SIGTERM and reloads on SIGHUP."""

from __future__ import annotations

import base64
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.processes import ROOT, free_port
from gateway.store.passwords import hash_password
from tests.support.corpus import corpus_mail
from tests.support.running import send, send_corpus
from tests.support.tls import write_self_signed

PLAIN = corpus_mail("13_no_attachment")
PPAP = corpus_mail("01_outlook_jis_aes256")
EXAMPLE = ROOT / "config" / "gateway.toml"


class Served:
    """One `serve` on a configuration file of its own, its log in a file read while it runs."""

    def __init__(self, tmp_path: Path, sink_port: int, *overrides: str):
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
        self.log = tmp_path / "serve.log"
        self.port, self.portal, self.admin = free_port(), free_port(), free_port()
        data = tmp_path / "data"
        settings = (
            f"smtp.listen=127.0.0.1:{self.port}", f"portal.listen=127.0.0.1:{self.portal}",
            f"admin.listen=127.0.0.1:{self.admin}", "portal.public_url=http://files.test",
            f"next_hop.url=smtp://127.0.0.1:{sink_port}", "next_hop.starttls=off",
            f"storage.data_dir={data}", f"storage.database={data}/gw.sqlite3",
            f"storage.master_key_file={data}/master.key", *overrides,
        )
        command = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        for setting in settings:
            command += ["-o", setting]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PPAP_GATEWAY_")}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)
        self.wait_for_log(r"INFO gateway ready: ")

    def logged(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.logged())) < count:
            assert self.process.poll() is None, self.logged()
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.logged()}"
            time.sleep(0.05)

    def workers(self) -> list[int]:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sorted(map(int, children))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)


@pytest.fixture
def served(tmp_path, sink):
    started: list[Served] = []

    def start(*overrides: str) -> Served:
        started.append(Served(tmp_path, sink.port, *overrides))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def greeting(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        return connection.makefile("rb").readline().decode()


class Session:
    """A raw SMTP client that reads every line the server sends, asked for or not."""

    def __init__(self, port: int):
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.lines = self.connection.makefile("rb")
        assert self.reply().startswith("220")

    def reply(self) -> str:
        while True:
            line = self.lines.readline().decode()
            if line[3:4] != "-":
                return line

    def say(self, command: str) -> str:
        self.connection.sendall(command.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.lines.close()
        self.connection.close()


def copies_for(recipients: list[str], sink) -> list[str]:
    """The recipients of the copies the sink holds (one copy per link; no receipts)."""
    return sorted(r for m in sink.messages for r in m.rcpt_tos if r in recipients)


class Background:
    """One message sent from a thread; `reply()` waits for the reply to its DATA."""

    def __init__(self, port: int, mail):
        self._replies: list[tuple[int, str]] = []
        self._thread = threading.Thread(
            target=lambda: self._replies.append(send_corpus(port, mail))
        )
        self._thread.start()

    def reply(self) -> tuple[int, str]:
        self._thread.join(timeout=60)
        assert self._replies, "no reply"
        return self._replies[0]


def send_numbered(port: int, number: int) -> int:
    """The plain corpus mail made a message of its own (the same bytes twice are one message)."""
    data = f"X-Test-Number: {number}\r\n".encode() + PLAIN.raw
    return send(port, PLAIN.mail_from, PLAIN.rcpt_tos, data)[0]


def test_every_worker_takes_sessions_and_a_killed_one_is_replaced(served, sink):
    # smtplib announces no SIZE: each session reserves the largest message from the budget
    gateway = served("gateway.workers=2", "smtp.max_message_size=1MiB",
                     "smtp.max_sessions_per_client=40")  # a closing session holds its slot a moment
    workers = gateway.workers()
    assert len(workers) == 2
    before = {pid: cpu_ticks(pid) for pid in workers}
    replies: list[int] = []

    def sender(number: int) -> None:
        for turn in range(6):
            replies.append(send_numbered(gateway.port, number * 10 + turn))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies == [250] * 120
    used = {pid: cpu_ticks(pid) - before[pid] for pid in workers}
    assert min(used.values()) >= 0.15 * sum(used.values()), f"one worker did the work: {used}"

    os.kill(workers[1], signal.SIGKILL)
    gateway.wait_for_log(r"worker 1 \(pid \d+\) died \(signal SIGKILL\): starting it again")
    deadline = time.monotonic() + 30
    while len(gateway.workers()) < 2 or workers[1] in gateway.workers():
        assert time.monotonic() < deadline, gateway.logged()
        time.sleep(0.05)
    assert workers[0] in gateway.workers()
    codes = [send_numbered(gateway.port, 1000 + n) for n in range(10)]
    assert codes == [250] * 10
    assert len(sink.wait_for(130, timeout=30)) == 130


def test_sigterm_finishes_the_message_in_data_and_answers_everyone_else_421(served, sink):
    gateway = served("gateway.workers=1")
    sink.hold_reply_next(3)  # our relay waits 3 s for the next hop's 250
    in_data = Background(gateway.port, PPAP)
    sink.wait_for(1, timeout=30)  # recorded there, its 250 held: our relay is under way
    idle = Session(gateway.port)
    assert idle.say("EHLO mta.test").startswith("250")

    gateway.signal(signal.SIGTERM)
    assert idle.reply().startswith("421 4.3.2"), "a session with no message is told at once"
    idle.close()
    assert greeting(gateway.port).startswith("421 4.3.2"), "a new client is told to come back"
    assert in_data.reply()[0] == 250
    assert gateway.process.wait(timeout=60) == 0
    assert copies_for(PPAP.rcpt_tos, sink) == sorted(PPAP.rcpt_tos), "each once"


def test_sighup_reloads_without_dropping_a_message_and_refuses_a_bad_configuration(
    served, sink
):
    gateway = served("gateway.workers=2")
    old_workers = gateway.workers()
    assert "ppap-gateway.localdomain" in greeting(gateway.port)
    sink.hold_reply_next(3)
    in_data = Background(gateway.port, PPAP)
    sink.wait_for(1, timeout=30)

    text = gateway.config.read_text(encoding="utf-8")
    gateway.config.write_text(text.replace(
        'hostname = "ppap-gateway.localdomain"', 'hostname = "reloaded.example.lg.jp"'
    ), encoding="utf-8")
    gateway.signal(signal.SIGHUP)
    gateway.wait_for_log(r"INFO gateway reloaded: ")
    assert "reloaded.example.lg.jp" in greeting(gateway.port)
    assert in_data.reply()[0] == 250, "the message in DATA across the reload went through"
    deadline = time.monotonic() + 30
    while set(gateway.workers()) & set(old_workers):
        assert time.monotonic() < deadline, "the old workers did not go"
        time.sleep(0.05)

    serving = gateway.workers()
    gateway.config.write_text(
        gateway.config.read_text(encoding="utf-8").replace(
            "max_sessions = 200", 'max_sessions = "lots"'
        ), encoding="utf-8",
    )
    gateway.signal(signal.SIGHUP)
    gateway.wait_for_log(r"reload refused, the running configuration stays: .*smtp\.max_sessions")
    assert gateway.workers() == serving
    assert "reloaded.example.lg.jp" in greeting(gateway.port)
    assert send_corpus(gateway.port, PLAIN)[0] == 250


def test_session_caps_hold_for_all_workers_together(served):
    gateway = served("gateway.workers=2", "smtp.max_sessions_per_client=2")
    connections = [socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
                   for _ in range(8)]
    try:
        greetings = [c.makefile("rb").readline().decode()[:3] for c in connections]
    finally:
        for connection in connections:
            connection.close()
    assert sorted(greetings) == ["220", "220"] + ["421"] * 6


def test_a_retry_reaching_another_worker_is_told_the_message_is_still_relaying(served, sink):
    gateway = served("gateway.workers=2")
    sink.hold_reply_next(4)
    first = Background(gateway.port, PPAP)
    sink.wait_for(1, timeout=30)
    retries = [send_corpus(gateway.port, PPAP) for _ in range(6)]  # over both workers' sockets
    assert all(code == 451 and "still being relayed" in text for code, text in retries), retries
    assert first.reply()[0] == 250
    assert send_corpus(gateway.port, PPAP)[0] == 250  # a duplicate now: answered, not sent
    time.sleep(0.5)
    assert copies_for(PPAP.rcpt_tos, sink) == sorted(PPAP.rcpt_tos), "each once"


def test_auth_guesses_spread_over_the_workers_get_no_more_tries_than_the_limit(
    served, tmp_path
):
    cert, key = write_self_signed(tmp_path)
    users = tmp_path / "users"
    users.write_text(f"scanner:{hash_password('correct horse')}\n")
    gateway = served(
        "gateway.workers=2", f"smtp.tls_cert={cert}", f"smtp.tls_key={key}",
        f"smtp.auth_users_file={users}", "smtp.allowed_clients=[\"192.0.2.0/24\"]",
        "smtp.auth_max_failures=4", "smtp.auth_max_failures_per_account=1000",
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    checked = 0
    for _ in range(10):  # a new session each time: the kernel spreads them over the workers
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
            client.starttls(context=context)
            client.ehlo("client.test")
            code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(
                b"\x00scanner\x00wrong guess").decode())
            checked += code == 535
            if code != 421:
                client.quit()
            else:
                client.close()
    assert checked <= 4, f"{checked} guesses were checked: more than smtp.auth_max_failures"
    assert checked >= 2, "every worker allows its share"


def test_workers_that_cannot_start_again_stop_serve_with_status_1(served, tmp_path):
    gateway = served("gateway.workers=1")
    (worker,) = gateway.workers()
    (tmp_path / "data" / "master.key").unlink()  # stored data without its key: cannot start
    os.kill(worker, signal.SIGKILL)
    assert gateway.process.wait(timeout=60) == 1
    log = gateway.logged()
    assert "master key" in log and "could not start 5 times in a row" in log, log[-2000:]
