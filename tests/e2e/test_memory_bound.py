"""Memory stays bounded when 50 clients send 20 MB at once: the DATA budget turns what does not
fit away with `451 4.3.2` (the client retries), never an OOM kill. Runs the real
`ppap-gateway serve` as a subprocess and reads its peak RSS (VmHWM) from /proc."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.processes import free_port, wait_listening
from tests.support.sink import RecordingSink

CLIENTS = 50
LINE = b"a" * 998 + b"\r\n"
BODY = LINE * 20_000  # 20 MB, shared by every client: the test process holds it once
BUDGET = 64 * 1024 * 1024
# What a byte of DATA costs the gateway until its reply, measured for plain mail: the received
# buffer and its bytes copy, the parser's text, lines and payload, the next hop client's
# dot-stuffed copies and write buffer: about 8, plus allocator slack. Without the budget this
# test peaks at several GB.
BYTES_PER_BUDGET_BYTE = 10
BASELINE_SLACK = 100 * 1024 * 1024
RETRY_FOR = 25.0  # seconds a client keeps retrying after a 4xx
SENDER, RECIPIENT = "somu@city.example.lg.jp", "tanaka@partner.example.com"


def write_config(tmp_path: Path, port: int, sink_port: int) -> Path:
    data = tmp_path / "data"
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
hostname = "gw.test"
internal_domains = ["city.example.lg.jp"]

[smtp]
listen = "127.0.0.1:{port}"
max_message_size = "25MiB"
max_data_in_flight = "{BUDGET}"
max_sessions_per_client = {CLIENTS + 5}  # + the readiness probe

[next_hop]
url = "smtp://127.0.0.1:{sink_port}"
starttls = "off"
timeout = "60s"

[storage]
data_dir = "{data}"

[portal]
public_url = "https://files.city.example.lg.jp"
listen = "127.0.0.1:{free_port()}"

[admin]
listen = "127.0.0.1:{free_port()}"
""", encoding="utf-8")
    return config


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def attempt(port: int, index: int, announce_size: bool) -> tuple[int, str]:
    """One transaction, streaming the shared body (smtplib's sendmail would copy it twice)."""
    head = b"From: <%s>\r\nTo: <%s>\r\nSubject: load-%d\r\n\r\n" % (
        SENDER.encode(), RECIPIENT.encode(), index)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.ehlo("load.test")
            options = [f"SIZE={len(head) + len(BODY)}"] if announce_size else []
            for code, text in (client.mail(SENDER, options), client.rcpt(RECIPIENT)):
                if code >= 300:
                    return code, text.decode()
            client.putcmd("data")
            code, text = client.getreply()
            if code != 354:
                return code, text.decode()
            for chunk in (head, BODY, b".\r\n"):
                client.send(chunk)
            code, text = client.getreply()
            return code, text.decode()
    except smtplib.SMTPConnectError as error:  # 421 as the greeting
        return error.smtp_code, error.smtp_error.decode()


def client(port: int, index: int, start: threading.Barrier, results: dict) -> None:
    start.wait()
    deadline = time.monotonic() + RETRY_FOR
    while True:
        code, text = attempt(port, index, announce_size=index % 2 == 0)
        results.setdefault(index, []).append((code, text))
        if not 400 <= code < 500 or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def test_fifty_clients_sending_20mb_at_once_stay_under_the_budget_derived_bound(tmp_path):
    port = free_port()
    with RecordingSink() as sink:
        config = write_config(tmp_path, port, sink.port)
        log = (tmp_path / "gateway.log").open("w")
        executable = Path(sys.executable).parent / "ppap-gateway"
        command = [str(executable), "serve", "--config", str(config)]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, process)
            baseline_kib = memory_kib(process.pid, "VmRSS")
            results: dict[int, list[tuple[int, str]]] = {}
            start = threading.Barrier(CLIENTS)
            threads = [threading.Thread(target=client, args=(port, i, start, results))
                       for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=90)
            assert process.poll() is None, "the gateway died"
            peak_kib = memory_kib(process.pid, "VmHWM")
            accepted = {i for i, tries in results.items() if tries[-1][0] == 250}
            arrived = sink.wait_for(len(accepted), timeout=30)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    finals = [tries[-1] for tries in results.values()]
    assert len(finals) == CLIENTS
    assert all(code == 250 or 400 <= code < 500 for code, _ in finals), finals
    assert accepted, "no message got through at all"
    subjects = [m.data[:200].split(b"Subject: load-")[1].split(b"\r\n")[0] for m in arrived]
    assert sorted(int(s) for s in subjects) == sorted(accepted)  # each 250 once, nothing else
    replies = [reply for tries in results.values() for reply in tries]
    assert any(code == 451 and "4.3.2" in text for code, text in replies)  # the budget did act
    bound_kib = baseline_kib + (BYTES_PER_BUDGET_BYTE * BUDGET + BASELINE_SLACK) // 1024
    print(f"baseline {baseline_kib // 1024} MiB, peak {peak_kib // 1024} MiB, "
          f"bound {bound_kib // 1024} MiB, accepted {len(accepted)}/{CLIENTS}")
    assert peak_kib < bound_kib
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()
