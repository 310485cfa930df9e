"""A client that dies in the middle of DATA, part of an encrypted ZIP sent: nothing is relayed,
nothing is kept (no transfer, file or link row, no blob or temp file), the budget it was charged
is given back, the log says the message was abandoned, and the gateway goes on serving."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest

from tests.support.raw_sink import RawClient
from tests.support.running import corpus_mail, send
from tests.support.store_rows import link_states, transfer_rows

MAIL = corpus_mail("01_outlook_jis_aes256")
# One message's worth of budget and no more: a charge the dead session kept would refuse the next.
ONE_AT_A_TIME = {"smtp": {"max_data_in_flight": "12MiB", "max_message_size": "12MiB"},
                 "policy": {"sender_receipt": False, "notify_sender": "never"}}


def half_of_the_zip() -> bytes:
    """Corpus 01 up to the middle of its encrypted ZIP's base64 lines."""
    zip_start = MAIL.raw.index(b"UEsDB")  # "PK\x03\x04" in base64: the ZIP's first record
    zip_end = MAIL.raw.index(b"\r\n--", zip_start)  # its closing boundary
    middle = MAIL.raw.index(b"\r\n", (zip_start + zip_end) // 2) + 2
    return MAIL.raw[:middle]


def die_in_data(port: int, how: str) -> None:
    client = RawClient(port)
    assert client.reply()[0] == 220
    for command in (b"EHLO client.test", f"MAIL FROM:<{MAIL.mail_from}>".encode(),
                    *(f"RCPT TO:<{rcpt}>".encode() for rcpt in MAIL.rcpt_tos)):
        assert client.command(command)[0] == 250
    assert client.command(b"DATA")[0] == 354
    client.send(half_of_the_zip())
    time.sleep(0.3)  # the gateway has read it
    connection = client.sock
    if how == "reset":  # killed: the kernel answers for it with RST
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def stored_files(data_dir) -> list[str]:
    """Every file under the data directory other than the database, its journal and the lock."""
    return sorted(str(path.relative_to(data_dir)) for path in data_dir.rglob("*")
                  if path.is_file() and not path.name.startswith(("meta", ".gateway.lock",
                                                                   "master.key")))


def abandoned_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("gateway") and "DATA" in record.getMessage()
            and "left" in record.getMessage()]


@pytest.mark.parametrize("how", ["reset", "closed"])
def test_a_client_gone_mid_data_leaves_nothing_relayed_or_kept_and_serving_goes_on(
    how, sink, start_gateway, caplog
):
    caplog.set_level(logging.INFO, logger="gateway")
    running = start_gateway(ONE_AT_A_TIME)
    data_dir = running.gateway.config.storage.data_dir
    before = stored_files(data_dir)

    die_in_data(running.port, how)

    deadline = time.monotonic() + 5
    while not abandoned_lines(caplog) and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = abandoned_lines(caplog)
    assert "nothing relayed" in line
    assert sink.messages == []
    assert transfer_rows(running) == [] and link_states(running) == {}
    assert stored_files(data_dir) == before, "no blob, no temp file"
    # Serving goes on, and the budget the dead session held is free again: this needs it all.
    assert send(running.port, MAIL.mail_from, MAIL.rcpt_tos, MAIL.raw,
                ("SIZE=12000000",))[0] == 250
    assert len(sink.wait_for(len(MAIL.rcpt_tos))) == len(MAIL.rcpt_tos)
