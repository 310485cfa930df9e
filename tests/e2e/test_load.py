"""Load at CI size: Postfix's smtp-source, 20 parallel sessions, 200 mixed messages through the gateway.

Two smtp-source processes run at once, 10 sessions each: one sends the corpus mail without an
attachment, the other the Outlook mail with an AES ZIP. `-N` puts a sequence number in front of each
recipient (`17plain@…`, `17zip@…`), so every message is distinct and countable at the sink.
The full-size run (20 and 100 sessions × 1000) is `make bench-load`.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.support.postfix import missing_programs, program
from tests.support.received import links_in
from tests.support.running import CORPUS, RunningGateway, make_config

SENDER = "somu@city.example.lg.jp"
PER_KIND = 100
SESSIONS_PER_KIND = 10
KINDS = {"plain": "13_no_attachment", "zip": "01_outlook_jis_aes256"}
NUMBERED = re.compile(r"^(\d+)(plain|zip)@partner\.example\.com$")


@pytest.fixture(autouse=True)
def smtp_source_installed() -> None:
    if reason := missing_programs():
        pytest.skip(reason)


def lf_copy(kind: str, directory: Path) -> Path:
    """The corpus mail with LF line ends: smtp-source appends CRLF to each line it reads (a CR
    left in the file would go out as a bare CR)."""
    eml = directory / f"{kind}.eml"
    eml.write_bytes((CORPUS / "mail" / f"{KINDS[kind]}.eml").read_bytes().replace(b"\r\n", b"\n"))
    return eml


def smtp_source(port: int, eml: Path, kind: str) -> subprocess.Popen[bytes]:
    command = [program("smtp-source") or "smtp-source", "-s", str(SESSIONS_PER_KIND),
               "-m", str(PER_KIND), "-N", "-d", "-M", "client.test", "-f", SENDER,
               "-t", f"{kind}@partner.example.com", "-F", str(eml), f"127.0.0.1:{port}"]
    # smtp-source exits non-zero on the first reply that is not the expected 2xx/3xx.
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen[bytes]) -> None:
    try:
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"smtp-source did not finish in 90 s: {output[-2000:]!r}")
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]


def test_smtp_source_20_sessions_every_message_arrives_once_and_the_log_has_no_error(
        tmp_path: Path, sink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # smtp-source announces no SIZE, so the gateway charges each DATA max_message_size of its
    # in-transit budget: 1 MiB (the mails are ~15 kB) keeps 20 sessions well inside it.
    document = {"policy": {"sender_receipt": False, "notify_sender": "never"},
                "smtp": {"max_message_size": "1MiB"}}
    config = make_config(tmp_path, f"smtp://127.0.0.1:{sink.port}", document)
    with RunningGateway(config) as gateway:
        sources = [smtp_source(gateway.port, lf_copy(kind, tmp_path), kind) for kind in KINDS]
        for source in sources:
            finish(source)
        sink.wait_for(PER_KIND * len(KINDS), timeout=60)
    received = list(sink.messages)  # after the gateway stopped: a late duplicate would be here

    recipients = Counter(rcpt for message in received for rcpt in message.rcpt_tos)
    assert len(received) == PER_KIND * len(KINDS)
    assert max(recipients.values()) == 1, "no message duplicated"
    numbers: dict[str, set[int]] = {kind: set() for kind in KINDS}
    for rcpt in recipients:
        number, kind = NUMBERED.fullmatch(rcpt).groups()
        numbers[kind].add(int(number))
    assert all(len(seen) == PER_KIND for seen in numbers.values()), "every message accounted for"

    plain = (CORPUS / "mail" / f"{KINDS['plain']}.eml").read_bytes()
    tokens: set[str] = set()
    for message in received:
        if message.rcpt_tos[0].endswith("plain@partner.example.com"):
            # smtp-source ends the data with one extra empty line
            assert message.data.rstrip(b"\r\n") == plain.rstrip(b"\r\n"), "plain mail passes untouched"
        else:
            assert b"PK\x03\x04" not in message.data and b"UEsDB" not in message.data
            tokens |= links_in(message.data)
    assert len(tokens) == PER_KIND, "one link per converted message"

    trouble = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert trouble == [], [r.getMessage() for r in trouble]
    decisions = Counter(re.search(r"\breply=(\S+)", r.getMessage()).group(1)
                        for r in caplog.records if "queue_id=" in r.getMessage())
    assert decisions == {"250": PER_KIND * len(KINDS)}
