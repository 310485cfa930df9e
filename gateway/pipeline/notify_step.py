"""Queue what a delivered link calls for: the download password over its separate channel,
and the sender's receipt with the management link (one per transfer, whichever attempt
delivers its first link).

Called inside the commit that activates the link, so a crash can neither lose these notices
nor queue them for a mail that never left. Secrets go into the outbox sealed to the item.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from gateway.addresses import is_null_sender
from gateway.config import Policy
from gateway.model import StoredTransfer
from gateway.store.controls import ControlsStore
from gateway.store.crypto import open_small, seal_small
from gateway.store.db import Database
from gateway.store.keys import KeyRing, key_ring
from gateway.store.outbox import OutboxStore, new_outbox_id
from gateway.store.passwords import hash_token, new_token

# The receipt lists every recipient served; waiting a little lets a message's other copies
# be delivered first, whatever order the worker and the relay run in.
RECEIPT_DELAY = timedelta(minutes=1)


class NoticeQueue:
    def __init__(self, db: Database, master_keys: KeyRing | bytes):
        self._db = db
        self._outbox = OutboxStore(db)
        self._controls = ControlsStore(db)
        self._master_keys = key_ring(master_keys)

    def _seal(self, item_id: str, secrets: dict) -> bytes:
        return seal_small(self._master_keys, item_id.encode(), json.dumps(secrets).encode())

    def _password(self, transfer_id: str) -> str:
        row = self._db.transfer(transfer_id)
        if row is None or row.password_sealed is None:
            raise ValueError(f"transfer {transfer_id} has no sealed password")
        return open_small(self._master_keys, transfer_id.encode(), row.password_sealed).decode()

    def link_delivered(
        self, transfer: StoredTransfer, link_id: str, policy: Policy, now: datetime
    ) -> bool:
        """Queue this link's notices; True when something is due at once (wake the worker).
        The transfer's own policy (as stored with it) wins over `policy`, the message's."""
        policy = transfer.policy or policy
        due_now = False
        channel = transfer.password_channel
        tid = transfer.transfer_id
        if channel in ("recipient-email", "webhook"):
            kind = "password-recipient" if channel == "recipient-email" else "webhook-password"
            delay = policy.password_delay if channel == "recipient-email" else timedelta(0)
            item_id = new_outbox_id()
            self._outbox.enqueue(
                kind=kind, now=now, due_at=now + delay, item_id=item_id, transfer_id=tid,
                link_id=link_id, dedupe_key=f"{kind}:{link_id}",
                sealed=self._seal(item_id, {"password": self._password(tid)}),
            )
            due_now = due_now or delay <= timedelta(0)
        elif channel == "sender-email":
            # One mail to the sender for all recipients, after the message's other copies.
            item_id = new_outbox_id()
            self._outbox.enqueue(
                kind="password-sender", now=now, due_at=now + RECEIPT_DELAY, item_id=item_id,
                transfer_id=tid, dedupe_key=f"password-sender:{tid}",
                sealed=self._seal(item_id, {"password": self._password(tid)}),
            )
        manage_token = self._receipt_token(transfer, now) if policy.sender_receipt else None
        if manage_token is not None:
            item_id = new_outbox_id()
            self._outbox.enqueue(
                kind="receipt", now=now, due_at=now + RECEIPT_DELAY, item_id=item_id,
                transfer_id=tid, dedupe_key=f"receipt:{tid}",
                sealed=self._seal(item_id, {"manage_token": manage_token}),
            )
        return due_now

    def _receipt_token(self, transfer: StoredTransfer, now: datetime) -> str | None:
        """The management token the transfer's one receipt carries; None when a receipt is
        queued already or the sender gets none (the null sender).

        A retry that reuses a transfer has no token in clear: only its hash was stored. If an
        earlier attempt died before any of its links was recorded as delivered (SIGKILL after
        the store, or after the next hop's 250), no receipt carries that token and nobody holds
        it, so a fresh one replaces it here, in the commit that queues the receipt."""
        tid = transfer.transfer_id
        if self._outbox.queued(f"receipt:{tid}"):
            return None
        if transfer.manage_token is not None or not transfer.reused:
            return transfer.manage_token  # a new transfer: None only for the null sender
        row = self._db.transfer(tid)
        if row is None or is_null_sender(row.sender):
            return None
        token = new_token()
        if not self._controls.replace_manage_token_hash(tid, hash_token(token)):
            return None  # a transfer from before management tokens existed
        self._db.append_event(
            "transfer.manage_token_reissued", now, transfer_id=tid,
            detail={"why": "no receipt was queued by the attempt that stored it"},
        )
        return token
