"""The store the password mail's lookup is measured on (tests/unit/test_unlock_waiting.py and its
PostgreSQL twin): a sender with 10,000 transfers still locked for others, a few for the mail's
recipient that the lookup must find or pass over, the lookup itself and what it must find."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.store.db import Database
from gateway.store.passwords import hash_token
from gateway.store.unlocks import UnlockStore

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
SENDER = "taro@example.jp"
OTHERS = 10_000
# What look_up_waiting finds: the recipient's open transfers of this sender, newest first.
WAITING = [("newer", ["tanaka@partner.example.com"]), ("mine", ["tanaka@partner.example.com"])]


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


def fill_waiting_transfers(db: Database) -> None:
    """The sender's transfers to other people, then one of each kind for the recipient: two
    to find, one of another sender, a revoked link, a purged transfer, one already unlocked."""
    with db.transaction():
        for n in range(OTHERS):
            add(db, f"other-{n}", f"partner{n}@example.com", minutes=n % 600)
        add(db, "mine", "Tanaka@Partner.example.com", minutes=30)
        add(db, "newer", "tanaka@partner.example.com", minutes=40)
        add(db, "someone-elses", "tanaka@partner.example.com", sender="hanako@example.jp")
        add(db, "revoked-link", "tanaka@partner.example.com", link_state="revoked")
        add(db, "expired", "tanaka@partner.example.com", state="purged")
        add(db, "opened", "tanaka@partner.example.com", minutes=20)
        db.write("INSERT INTO unlocks (transfer_id, state, source, at, reason, keep_original)"
                 " VALUES ('opened', 'unlocked', 'password-mail', ?, '', 0)", (T0.isoformat(),))


def look_up_waiting(db: Database) -> list[tuple[str, list[str]]]:
    """The password mail's lookup for the recipient (and one without transfers): (transfer id,
    the recipients it links) per transfer found."""
    found = UnlockStore(db).waiting_for_password(
        "TARO@example.jp", ("tanaka@partner.example.com", "kato@example.co.jp"),
        T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    return [(transfer.id, sorted(linked)) for transfer, linked in found]
