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
    """The latest one-time code of a link. `code_hash` is '' once the code was used.

    `sends` and `total_failures` are the link's budget spent since it was last verified or
    unlocked; `locked_at` is set once either budget ran out (no code is sent or checked then,
    until the sender unlocks the link)."""

    link_id: str
    code_hash: str
    expires_at: datetime
    failures: int
    sent_at: datetime
    sends: int
    verified_at: datetime | None
    total_failures: int = 0
    locked_at: datetime | None = None
    locked_reason: str | None = None  # 'sends' | 'failures'

    def usable(self, now: datetime, max_attempts: int) -> bool:
        return (bool(self.code_hash) and now < self.expires_at and self.failures < max_attempts
                and self.locked_at is None)


def _otp(row) -> OtpState:
    return OtpState(
        link_id=row["link_id"], code_hash=row["code_hash"],
        expires_at=from_text(row["expires_at"]), failures=row["failures"],
        sent_at=from_text(row["sent_at"]), sends=row["sends"],
        verified_at=from_text(row["verified_at"]), total_failures=row["total_failures"],
        locked_at=from_text(row["locked_at"]), locked_reason=row["locked_reason"],
    )


class CodesLocked(Exception):
    """The link is locked for codes: its budget was spent; only the sender can unlock it."""


class CodeBudgetSpent(Exception):
    """The link has been sent as many codes as its budget allows: lock it (lock_otp)."""


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

    def replace_manage_token_hash(self, transfer_id: str, token_hash: str) -> bool:
        """Give the transfer a new management token (its hash); False when it has no controls.
        Only for a token nobody holds: call it in the commit that queues the receipt."""
        return self._db.write(
            "UPDATE transfer_controls SET manage_token_hash = ? WHERE transfer_id = ?",
            (token_hash, transfer_id),
        ) == 1

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
            # Locked while checked: a purge or another extension waits, then sees this one.
            self._db.locked("SELECT id FROM transfers WHERE id = ?", (transfer_id,))
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

    def otp_states(self, transfer_id: str) -> dict[str, OtpState]:
        """The code state of each link of the transfer that has one, by link id."""
        rows = self._db.query(
            "SELECT link_otp.* FROM link_otp JOIN links ON links.id = link_otp.link_id"
            " WHERE links.transfer_id = ?", (transfer_id,),
        )
        return {row["link_id"]: _otp(row) for row in rows}

    def issue_otp(self, link_id: str, code_hash: str, now: datetime, expires_at: datetime,
                  resend_interval: timedelta, max_sends: int) -> int:
        """Replace the link's code by a new one (its count of wrong tries starts again).
        Refused, with nothing written: CodesLocked if the link is locked, CodeBudgetSpent if
        it has been sent `max_sends` codes already, ResendTooSoon if the last was sent less
        than `resend_interval` ago. Returns how many codes this link has been sent. Call
        inside the transaction that queues the mail."""
        with self._db.transaction():
            self._db.lock_link(link_id)  # parallel requests check and count one after another
            current = self.otp_state(link_id)
            if current is not None and current.locked_at is not None:
                raise CodesLocked(link_id)
            if current is not None and current.sends >= max_sends:
                raise CodeBudgetSpent(link_id)
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

    def settle_otp(self, link_id: str, typed_hash: str, now: datetime, max_attempts: int,
                   max_failures: int) -> str:
        """Check a typed code (as its MAC) against the link's code and record the outcome:
        'verified' (the code is used up; the link's budget starts again), 'wrong', 'locked'
        (that was the code's last try: the code is void), 'budget_spent' (that was the link's
        last wrong try: the link is locked now, see lock_otp), 'link_locked' (it already
        was), 'expired', or 'void' (no code, used, or locked)."""
        with self._db.transaction():
            self._db.lock_link(link_id)  # parallel tries of one code are counted one by one
            current = self.otp_state(link_id)
            if current is not None and current.locked_at is not None:
                return "link_locked"
            if current is None or not current.code_hash or current.failures >= max_attempts:
                return "void"
            if now >= current.expires_at:
                return "expired"
            if hmac.compare_digest(typed_hash.encode(), current.code_hash.encode()):
                self._db.write(
                    "UPDATE link_otp SET code_hash = '', verified_at = ?, sends = 0,"
                    " total_failures = 0 WHERE link_id = ?",
                    (to_text(now), link_id),
                )
                return "verified"
            self._db.write(
                "UPDATE link_otp SET failures = failures + 1, total_failures = total_failures + 1"
                " WHERE link_id = ?", (link_id,)
            )
            if current.total_failures + 1 >= max_failures:
                self.lock_otp(link_id, now, "failures")
                return "budget_spent"
            return "locked" if current.failures + 1 >= max_attempts else "wrong"

    def lock_otp(self, link_id: str, now: datetime, reason: str) -> bool:
        """Lock the link for codes (its code is void); False if it was locked already, so
        only one caller tells the sender."""
        return self._db.write(
            "UPDATE link_otp SET locked_at = ?, locked_reason = ?, code_hash = ''"
            " WHERE link_id = ? AND locked_at IS NULL",
            (to_text(now), reason, link_id),
        ) == 1

    def unlock_otp(self, transfer_id: str, link_id: str, now: datetime, by: str,
                   detail: dict[str, Any] | None = None) -> bool:
        """The sender's unlock: the link's budget starts again (no code is live), audited in
        the same commit. False when that link of the transfer was not locked."""
        with self._db.transaction():
            changed = self._db.write(
                "UPDATE link_otp SET locked_at = NULL, locked_reason = NULL, code_hash = '',"
                " failures = 0, total_failures = 0, sends = 0 WHERE link_id = ?"
                " AND locked_at IS NOT NULL"
                " AND link_id IN (SELECT id FROM links WHERE transfer_id = ?)",
                (link_id, transfer_id),
            )
            if changed == 1:
                self._db.append_event(
                    "otp.link_unlocked", now, transfer_id=transfer_id, link_id=link_id,
                    detail={**(detail or {}), "by": by},
                )
        return changed == 1
