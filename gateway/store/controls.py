"""What the sender controls about a transfer: its management token (stored hashed), whether
recipients must prove their mailbox, when the sender hears of downloads; revoke/extend; and
the one-time codes that prove a visitor holds the recipient's mailbox (stored as MACs)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.store.db import Database, from_text, to_text


@dataclass(frozen=True)
class TransferControls:
    transfer_id: str
    manage_token_hash: str
    verify_recipient: bool
    notify_sender: str  # 'never' | 'first-download' | 'every-download'
    max_expires_at: datetime


def _controls(row) -> TransferControls:
    return TransferControls(
        transfer_id=row["transfer_id"], manage_token_hash=row["manage_token_hash"],
        verify_recipient=bool(row["verify_recipient"]), notify_sender=row["notify_sender"],
        max_expires_at=from_text(row["max_expires_at"]),
    )


class ExtensionRefused(ValueError):
    """The new expiry is past the policy's maximum, or not later than the current one, or
    the transfer has already ended."""


@dataclass(frozen=True)
class OtpState:
    """The latest one-time code of a link. `code_hash` is '' once the code was used."""

    link_id: str
    code_hash: str
    expires_at: datetime
    failures: int
    sent_at: datetime
    sends: int
    verified_at: datetime | None

    def usable(self, now: datetime, max_attempts: int) -> bool:
        return bool(self.code_hash) and now < self.expires_at and self.failures < max_attempts


def _otp(row) -> OtpState:
    return OtpState(
        link_id=row["link_id"], code_hash=row["code_hash"],
        expires_at=from_text(row["expires_at"]), failures=row["failures"],
        sent_at=from_text(row["sent_at"]), sends=row["sends"],
        verified_at=from_text(row["verified_at"]),
    )


class ResendTooSoon(Exception):
    """A code was sent to this link too recently; `retry_at` is when another may go."""

    def __init__(self, retry_at: datetime):
        super().__init__(f"another code may be sent at {retry_at.isoformat()}")
        self.retry_at = retry_at


@dataclass(frozen=True)
class DownloadHistory:
    """What the audit trail says about one link's downloads."""

    count: int
    first_at: datetime
    last_at: datetime


class ControlsStore:
    def __init__(self, db: Database):
        self._db = db

    def insert(
        self, *, transfer_id: str, manage_token_hash: str, verify_recipient: bool,
        notify_sender: str, max_expires_at: datetime,
    ) -> None:
        self._db.write(
            "INSERT INTO transfer_controls (transfer_id, manage_token_hash, verify_recipient,"
            " notify_sender, max_expires_at) VALUES (?, ?, ?, ?, ?)",
            (transfer_id, manage_token_hash, int(verify_recipient), notify_sender,
             to_text(max_expires_at)),
        )

    def of(self, transfer_id: str) -> TransferControls | None:
        rows = self._db.query(
            "SELECT * FROM transfer_controls WHERE transfer_id = ?", (transfer_id,)
        )
        return _controls(rows[0]) if rows else None

    def by_manage_token_hash(self, token_hash: str) -> TransferControls | None:
        rows = self._db.query(
            "SELECT * FROM transfer_controls WHERE manage_token_hash = ?", (token_hash,)
        )
        return _controls(rows[0]) if rows else None

    def revoke_links(self, transfer_id: str, link_id: str | None, now: datetime, by: str,
                     detail: dict[str, Any] | None = None) -> int:
        """Revoke one active link of the transfer, or all of them; audited in the same commit."""
        with self._db.transaction():
            if link_id is None:
                changed = self._db.write(
                    "UPDATE links SET state = 'revoked' WHERE transfer_id = ? AND state = 'active'",
                    (transfer_id,),
                )
            else:
                changed = self._db.write(
                    "UPDATE links SET state = 'revoked' WHERE id = ? AND transfer_id = ?"
                    " AND state = 'active'",
                    (link_id, transfer_id),
                )
            self._db.append_event(
                "link.revoked", now, transfer_id=transfer_id, link_id=link_id,
                detail={**(detail or {}), "by": by, "links": changed,
                        "scope": "one" if link_id else "all"},
            )
        return changed

    def extend(self, transfer_id: str, new_expires_at: datetime, now: datetime, by: str,
               detail: dict[str, Any] | None = None) -> None:
        with self._db.transaction():
            controls = self.of(transfer_id)
            transfer = self._db.transfer(transfer_id)
            if controls is None or transfer is None:
                raise ExtensionRefused("no such transfer")
            if transfer.state != "active" or transfer.expires_at <= now:
                raise ExtensionRefused("the transfer has already ended")
            if new_expires_at > controls.max_expires_at:
                raise ExtensionRefused("past the longest lifetime the policy allows")
            if new_expires_at <= transfer.expires_at:
                raise ExtensionRefused("not later than the current expiry")
            self._db.write(
                "UPDATE transfers SET expires_at = ? WHERE id = ? AND state = 'active'",
                (to_text(new_expires_at), transfer_id),
            )
            self._db.append_event(
                "transfer.extended", now, transfer_id=transfer_id,
                detail={**(detail or {}), "by": by, "from": to_text(transfer.expires_at),
                        "to": to_text(new_expires_at)},
            )

    def download_history(self, transfer_id: str) -> dict[str, DownloadHistory]:
        """Per link id: how many downloads the audit trail holds, the first and the last."""
        rows = self._db.query(
            "SELECT link_id, COUNT(*), MIN(at), MAX(at) FROM events WHERE transfer_id = ?"
            " AND kind = 'download' AND link_id IS NOT NULL GROUP BY link_id",
            (transfer_id,),
        )
        return {
            row[0]: DownloadHistory(row[1], from_text(row[2]), from_text(row[3])) for row in rows
        }

    # -- one-time codes -------------------------------------------------------------------

    def otp_state(self, link_id: str) -> OtpState | None:
        rows = self._db.query("SELECT * FROM link_otp WHERE link_id = ?", (link_id,))
        return _otp(rows[0]) if rows else None

    def issue_otp(self, link_id: str, code_hash: str, now: datetime, expires_at: datetime,
                  resend_interval: timedelta) -> int:
        """Replace the link's code by a new one (its count of wrong tries starts again);
        ResendTooSoon if the last was sent less than `resend_interval` ago. Returns how many
        codes this link has been sent. Call inside the transaction that queues the mail."""
        with self._db.transaction():
            current = self.otp_state(link_id)
            if current is not None and now < current.sent_at + resend_interval:
                raise ResendTooSoon(current.sent_at + resend_interval)
            self._db.write(
                "INSERT INTO link_otp (link_id, code_hash, expires_at, failures, sent_at, sends,"
                " verified_at) VALUES (?, ?, ?, 0, ?, 1, NULL) ON CONFLICT (link_id) DO UPDATE"
                " SET code_hash = excluded.code_hash, expires_at = excluded.expires_at,"
                " failures = 0, sent_at = excluded.sent_at, sends = link_otp.sends + 1,"
                " verified_at = NULL",
                (link_id, code_hash, to_text(expires_at), to_text(now)),
            )
            return 1 if current is None else current.sends + 1

    def settle_otp(self, link_id: str, typed_hash: str, now: datetime, max_attempts: int) -> str:
        """Check a typed code (as its MAC) against the link's code and record the outcome:
        'verified' (the code is used up), 'wrong', 'locked' (that was the last try: the code
        is void), 'expired', or 'void' (no code, used, or locked)."""
        with self._db.transaction():
            current = self.otp_state(link_id)
            if current is None or not current.code_hash or current.failures >= max_attempts:
                return "void"
            if now >= current.expires_at:
                return "expired"
            if hmac.compare_digest(typed_hash.encode(), current.code_hash.encode()):
                self._db.write(
                    "UPDATE link_otp SET code_hash = '', verified_at = ? WHERE link_id = ?",
                    (to_text(now), link_id),
                )
                return "verified"
            self._db.write(
                "UPDATE link_otp SET failures = failures + 1 WHERE link_id = ?", (link_id,)
            )
            return "locked" if current.failures + 1 >= max_attempts else "wrong"
