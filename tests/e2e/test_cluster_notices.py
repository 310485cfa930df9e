"""Two `serve` nodes on one PostgreSQL send each notice once: both sending at the same time, and
node A SIGKILLed holding the claim on a notice — before the next hop accepted it (node B sends it
once A's lease has run out, once in all) or after (the one notice that may go twice, RFC 5321's
lost 250; nothing else does).

The notices are the recipients' password mails: the default policy is given password =
"recipient-email" with a delay of 2 s, so they are due soon after the links, away from the
relay's own deliveries. The sender's receipt is left out: it is due a fixed minute after the
message (RECEIPT_DELAY), past these tests. Each node has its own sink, so a notice's sink says
which node sent it."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.parser import BytesHeaderParser

import pytest

from gateway.store.keys import DOWNLOAD_PASSWORD_KEY, derive_key
from gateway.store.passwords import verify_password
from tests.support.cluster import PPAP, Node, numbered, shared_master_key
from tests.support.postgres import raw_rows
from tests.support.received import body_text, password_in
from tests.support.running import send
from tests.support.sink import RecordingSink

LEASE = 3.0  # seconds: notify.claim_lease of every node here
NOTICE_SETTINGS = (
    "gateway.workers=1", "policy.password=recipient-email", "policy.password_delay=2s",
    "policy.sender_receipt=false", "notify.poll_interval=200ms", f"notify.claim_lease={LEASE}s",
)
SETTLE = 1.0  # seconds (5 polls) after the last notice expected, for any second copy to show


@dataclass(frozen=True)
class Notice:
    about: str  # the Message-ID of the mail whose password it carries (its In-Reply-To)
    recipient: str
    password: str
    message_id: str  # its own: the same on every send of one outbox item


def notices_at(sink: RecordingSink) -> list[Notice]:
    found = []
    for message in list(sink.messages):
        header = BytesHeaderParser().parsebytes(message.data)
        if str(header["Message-ID"]).startswith("<notice-"):
            [recipient] = message.rcpt_tos
            found.append(Notice(str(header["In-Reply-To"]).strip(), recipient,
                                password_in(body_text(message.data)),
                                str(header["Message-ID"]).strip()))
    return found


def wait_for_notices(sinks: tuple[RecordingSink, ...], count: int, timeout: float = 30) -> None:
    """Until `count` notices have arrived in all, then SETTLE more for any extra one."""
    deadline = time.monotonic() + timeout
    while (got := sum(len(notices_at(sink)) for sink in sinks)) < count:
        assert time.monotonic() < deadline, f"{got} notices of {count}"
        time.sleep(0.05)
    time.sleep(SETTLE)


def sends_per_notice(sinks: tuple[RecordingSink, ...], dsn: str,
                     master_key: str) -> Counter[tuple[str, str]]:
    """How often each (mail, recipient) link's password mail arrived; every link counted, and
    each password checked against its transfer's stored hash: a mail that does not open its
    own transfer, or belongs to no link, fails here."""
    key = derive_key(base64.b64decode(master_key), DOWNLOAD_PASSWORD_KEY)
    rows = raw_rows(dsn, "SELECT t.message_id, l.recipient, t.password_hash"
                         " FROM links l JOIN transfers t ON t.id = l.transfer_id")
    stored = {(about.strip(), recipient): password_hash for about, recipient, password_hash in rows}
    sends = Counter({link: 0 for link in stored})
    for sink in sinks:
        for notice in notices_at(sink):
            link = (notice.about, notice.recipient)
            assert link in stored, notice
            assert verify_password(notice.password, stored[link], key), notice
            sends[link] += 1
    return sends


def held_by(dsn: str, node: str) -> list[tuple[str, str]]:
    """(id, claimed_until) of the pending items `node` has claimed."""
    return raw_rows(dsn, "SELECT id, claimed_until FROM outbox WHERE claimed_by = %s"
                         " AND state = 'pending'", (node,))


def outbox_states(dsn: str) -> dict[str, int]:
    return dict(raw_rows(dsn, "SELECT state, count(*) FROM outbox GROUP BY state"))


def send_all(node: Node, numbers: range) -> None:
    for number in numbers:
        assert send(node.port, PPAP.mail_from, PPAP.rcpt_tos, numbered(number))[0] == 250


@pytest.fixture
def master_key() -> str:
    return shared_master_key()


@pytest.fixture
def other_sink():
    with RecordingSink() as running:
        yield running


@pytest.fixture
def start_node(tmp_path, postgres_dsn, master_key):
    """Factory: node `name` (also its gateway.node_id) relaying to `sink`, with the notice
    settings above, on the shared database and master key."""
    started: list[Node] = []

    def start(name: str, sink: RecordingSink, crash_at: str = "") -> Node:
        node = Node(tmp_path, name, postgres_dsn, master_key, sink.port, *NOTICE_SETTINGS,
                    f"gateway.node_id={name}", crash_at=crash_at)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


def test_two_nodes_sending_at_once_send_each_password_mail_exactly_once(
    start_node, sink, other_sink, postgres_dsn, master_key,
) -> None:
    """Mail through both nodes; both send its password mails at the same time, each node's
    sends made slow enough that the other claims items meanwhile: every one arrives once."""
    a, b = start_node("a", sink), start_node("b", other_sink)
    senders = [threading.Thread(target=send_all, args=(node, numbers))
               for node, numbers in ((a, range(4)), (b, range(100, 104)))]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=60)
    links = 8 * len(PPAP.rcpt_tos)
    for each in (sink, other_sink):
        each.wait_for(links // 2)  # the link copies; the password mails are due 2 s later
        for _ in range(links):
            # A node that loses a claim race waits a poll; without this the winner, sending a
            # notice in ~10 ms, would send them all before the other looks again.
            each.delay_next("MAIL", 0.15)
    wait_for_notices((sink, other_sink), links)

    sends = sends_per_notice((sink, other_sink), postgres_dsn, master_key)
    assert len(sends) == links and set(sends.values()) == {1}, sends
    assert notices_at(sink) and notices_at(other_sink), "both nodes sent some of them"
    assert outbox_states(postgres_dsn) == {"sent": links}


def test_a_notice_node_a_held_when_killed_is_sent_once_by_node_b_after_its_lease(
    start_node, sink, other_sink, postgres_dsn, master_key,
) -> None:
    """A claims a notice and the next hop takes its content but never answers; A is killed.
    B sends that notice once A's lease has run out, and the others meanwhile: each arrives once."""
    a, b = start_node("a", sink), start_node("b", other_sink)
    send_all(a, range(2))
    links = 2 * len(PPAP.rcpt_tos)
    sink.wait_for(links)  # the link copies; the password mails are due 2 s later
    sink.delay_next("DATA", 60)  # A's first notice: received, never answered
    other_sink.delay_next("MAIL", 2)  # B's first notice waits, so that A claims one meanwhile
    deadline = time.monotonic() + 30
    while not (held := held_by(postgres_dsn, "a")):
        assert time.monotonic() < deadline, raw_rows(postgres_dsn, "SELECT * FROM outbox")
        time.sleep(0.02)
    time.sleep(0.3)  # into the next hop's silence
    a.kill()
    [(held_id, held_until)] = held
    wait_for_notices((sink, other_sink), links)

    sends = sends_per_notice((sink, other_sink), postgres_dsn, master_key)
    assert len(sends) == links and set(sends.values()) == {1}, sends
    assert notices_at(sink) == [], "the next hop never accepted A's notice"
    assert outbox_states(postgres_dsn) == {"sent": links}
    [(claimer, sent_at)] = raw_rows(postgres_dsn, "SELECT claimed_by, sent_at FROM outbox"
                                                  " WHERE id = %s", (held_id,))
    assert claimer == "b" and sent_at >= held_until, "taken over only once A's lease ran out"
    assert b.process.poll() is None


def test_a_notice_accepted_as_node_a_died_is_sent_again_by_b_and_nothing_else_twice(
    start_node, sink, other_sink, postgres_dsn, master_key,
) -> None:
    """A dies between the next hop's 250 for a notice and recording it (crash point
    notify.sent): that notice is sent again by B after A's lease, with the same Message-ID so
    that the receiver can drop it; every other notice arrives once."""
    a = start_node("a", sink, crash_at="notify.sent")
    b = start_node("b", other_sink)
    send_all(a, range(2))
    links = 2 * len(PPAP.rcpt_tos)
    sink.wait_for(links)
    other_sink.delay_next("MAIL", 2)  # B's first notice waits, so that A sends one meanwhile
    a.process.wait(timeout=30)
    [(held_id, held_until)] = held_by(postgres_dsn, "a")  # B waits for its lease to run out
    wait_for_notices((sink, other_sink), links + 1)

    [by_a] = notices_at(sink)
    sends = sends_per_notice((sink, other_sink), postgres_dsn, master_key)
    assert len(sends) == links
    assert sends.pop((by_a.about, by_a.recipient)) == 2 and set(sends.values()) == {1}, sends
    again = [notice.message_id for notice in notices_at(other_sink)
             if (notice.about, notice.recipient) == (by_a.about, by_a.recipient)]
    assert again == [by_a.message_id], "the same Message-ID: the receiver can drop it"
    assert by_a.message_id.startswith(f"<notice-{held_id}@")
    assert outbox_states(postgres_dsn) == {"sent": links}
    [(claimer, sent_at)] = raw_rows(postgres_dsn, "SELECT claimed_by, sent_at FROM outbox"
                                                  " WHERE id = %s", (held_id,))
    assert claimer == "b" and sent_at >= held_until, "taken over only once A's lease ran out"
    assert b.process.poll() is None
