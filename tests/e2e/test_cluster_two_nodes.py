"""Two `serve` nodes on one PostgreSQL database (metadata and files): a link issued by one
downloads from the other, a revoke on one is refused by the other at once, and a node killed
under load loses nothing it answered 250 for."""

from __future__ import annotations

import hashlib
import smtplib
import threading
import time

import pytest

from tests.support.cluster import Node, message_id, numbered, shared_master_key
from tests.support.portal_http import download_once, portal
from tests.support.postgres import raw_rows
from tests.support.received import links_in
from tests.support.running import corpus_mail, send, send_corpus

PPAP = corpus_mail("01_outlook_jis_aes256")


@pytest.fixture
def two_nodes(tmp_path, sink, postgres_dsn):
    key = shared_master_key()
    nodes = [Node(tmp_path, name, postgres_dsn, key, sink.port) for name in ("a", "b")]
    for node in nodes:
        node.start()
    yield nodes
    for node in nodes:
        node.stop()


def test_a_link_from_node_a_downloads_from_node_b_and_a_revoke_on_b_is_refused_by_a(
    two_nodes, sink, postgres_dsn,
) -> None:
    a, b = two_nodes
    assert send_corpus(a.port, PPAP)[0] == 250
    copies = sink.wait_for(len(PPAP.rcpt_tos))
    tokens = sorted({token for copy in copies for token in links_in(copy.data)})
    assert len(tokens) == len(PPAP.rcpt_tos)

    body = download_once(b, tokens[0])
    assert hashlib.sha256(body).hexdigest() == PPAP.side["attachments"][0]["sha256"]
    assert portal(a, f"/d/{tokens[1]}")[0] == 200

    [(transfer_id,)] = raw_rows(postgres_dsn, "SELECT id FROM transfers")
    revoked = b.command("revoke", transfer_id)
    assert revoked.returncode == 0, revoked.stderr
    assert [portal(node, f"/d/{token}")[0] for node in (a, b) for token in tokens] == \
        [410] * (2 * len(tokens))


def test_node_a_killed_under_load_loses_nothing_that_got_a_250(two_nodes, sink) -> None:
    """Mail flows into both nodes; node A is SIGKILLed mid-way. Every message either node
    answered 250 has one copy per recipient at the next hop, none twice, and each copy's link
    downloads the file from node B."""
    a, b = two_nodes
    replies: dict[int, tuple[str, int | None]] = {}

    def sender(node, numbers: range) -> None:
        for number in numbers:
            try:
                code = send(node.port, PPAP.mail_from, PPAP.rcpt_tos, numbered(number))[0]
            except (OSError, smtplib.SMTPException):
                code = None  # the node died under this session: no promise was made
            replies[number] = (node.name, code)

    threads = [threading.Thread(target=sender, args=(node, range(start, start + 30)))
               for node, start in ((a, 0), (a, 100), (b, 200), (b, 300))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(1 for node, code in replies.values() if node == "a" and code == 250) < 15:
        assert time.monotonic() < deadline, replies
        time.sleep(0.01)
    a.kill()
    for thread in threads:
        thread.join(timeout=120)

    accepted = sorted(number for number, (_, code) in replies.items() if code == 250)
    expected = PPAP.side["attachments"][0]["sha256"]
    assert any(replies[n][0] == "a" for n in accepted) and any(replies[n][0] == "b" for n in accepted)
    assert any(code != 250 for _, code in replies.values()), "A died before answering some"
    copies: dict[str, list[bytes]] = {}
    for message in sink.messages:
        copies.setdefault(message_id(message.data), []).extend(
            [message.data] * len(message.rcpt_tos))
    for number in accepted:
        got = copies.get(f"<load-{number}@city.example.lg.jp>", [])
        assert len(got) == len(PPAP.rcpt_tos), (number, replies[number], len(got))
        for data in got:
            [token] = links_in(data)
            assert hashlib.sha256(download_once(b, token)).hexdigest() == expected, number
