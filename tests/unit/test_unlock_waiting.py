"""A mail without attachments asks whether it is the password mail of a transfer its sender sent
to the same recipients. The answer is one indexed query whatever the sender has pending for
others (issue 14 point 2: 1,242 such transfers made a 2 KB mail cost 44-96 ms)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.store.db import Database
from gateway.store.passwords import hash_token
from gateway.store.unlocks import UnlockStore

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
SENDER = "taro@example.jp"
OTHERS = 10_000


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "meta.db")
    yield database
    database.close()


def add(db: Database, transfer_id: str, recipient: str, *, sender: str = SENDER,
        minutes: int = 0, state: str = "active", link_state: str = "active") -> None:
    db.insert_transfer(
        id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@example.jp>",
        sender=sender, department="sales", subject="見積書",
        created_at=T0 + timedelta(minutes=minutes), expires_at=T0 + timedelta(days=7),
        password_channel="recipient-email", locale="ja", state=state,
    )
    db.insert_link(id="l-" + transfer_id, transfer_id=transfer_id, recipient=recipient,
                   token_hash=hash_token("token-" + transfer_id), created_at=T0,
                   state=link_state)


def statements_of(db: Database, call) -> list[str]:
    seen: list[str] = []
    db._conn.set_trace_callback(seen.append)  # noqa: SLF001 - the connection the store uses
    try:
        call()
    finally:
        db._conn.set_trace_callback(None)  # noqa: SLF001
    return seen


def test_the_recipients_waiting_transfers_are_found_in_one_query_whatever_else_is_pending(db):
    with db.transaction():
        for n in range(OTHERS):  # the sender's transfers to other people, all still locked
            add(db, f"other-{n}", f"partner{n}@example.com", minutes=n % 600)
        add(db, "mine", "Tanaka@Partner.example.com", minutes=30)
        add(db, "newer", "tanaka@partner.example.com", minutes=40)
        add(db, "someone-elses", "tanaka@partner.example.com", sender="hanako@example.jp")
        add(db, "revoked-link", "tanaka@partner.example.com", link_state="revoked")
        add(db, "expired", "tanaka@partner.example.com", state="purged")
        add(db, "opened", "tanaka@partner.example.com", minutes=20)
        db.write("INSERT INTO unlocks (transfer_id, state, source, at, reason, keep_original)"
                 " VALUES ('opened', 'unlocked', 'password-mail', ?, '', 0)", (T0.isoformat(),))
    store = UnlockStore(db)
    found: list = []
    statements = statements_of(db, lambda: found.extend(store.waiting_for_password(
        "TARO@example.jp", ("tanaka@partner.example.com", "kato@example.co.jp"),
        T0 - timedelta(hours=1), T0 + timedelta(hours=2))))
    assert [(t.id, sorted(linked)) for t, linked in found] == [
        ("newer", ["tanaka@partner.example.com"]), ("mine", ["tanaka@partner.example.com"])]
    assert len(statements) == 1, statements
    plan = " ".join(str(row[-1]) for row in db.query("EXPLAIN QUERY PLAN " + statements[0]))
    # from the recipients' links to their transfers; never the sender's transfers walked
    assert plan.startswith("SEARCH l USING INDEX links_by_recipient"), plan
    assert "transfers_by_sender" not in plan, plan


def test_no_recipient_no_query(db):
    assert statements_of(db, lambda: UnlockStore(db).waiting_for_password(
        SENDER, (), T0, T0)) == []
