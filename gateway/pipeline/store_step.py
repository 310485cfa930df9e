"""Store the files a message converts, once, and issue one pending link per external recipient.

Blob data is fsync'd before any metadata refers to it; the metadata for one message goes in
one commit. Links start 'pending' and are only activated once the next hop has accepted the
mail that carries them, so files of a failed delivery are never reachable.
A retry of the same message (same fingerprint) reuses the files already stored, unless the
purge took them meanwhile: then they are stored again.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from gateway.addresses import is_null_sender
from gateway.crashpoints import crash_point
from gateway.model import (
    Attachment,
    Decision,
    Envelope,
    IssuedLink,
    StoredFile,
    StoredTransfer,
    ZipVerdict,
)
from gateway.store.blobs import BlobStore
from gateway.store.controls import ControlsStore
from gateway.store.crypto import seal_small
from gateway.store.db import Database, TransferRow
from gateway.store.keys import DOWNLOAD_PASSWORD_KEY, KeyRing, derive_key, key_ring
from gateway.store.passwords import (
    generate_password,
    hash_generated_password,
    hash_token,
    new_token,
)
from gateway.store.policies import policy_to_json, stored_policy


@dataclass(frozen=True)
class MessageFacts:
    """What the store keeps about the message itself (taken from its headers)."""

    fingerprint: str
    message_id: str
    subject: str


class _TransferGone(Exception):
    """The transfer a retry meant to reuse was purged before its links were committed."""


def _chunks(data: bytes, size: int) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start:start + size]


def new_id() -> str:
    return secrets.token_hex(16)


def password_channel(policy_channel: str, sender: str) -> str:
    """The channel a transfer's download password takes. Nothing is ever sent to the null sender
    (RFC 3834, RFC 5321 4.5.5), so a password meant for the sender goes to each recipient by its
    own mail instead: the download still needs it, and the notice says so."""
    if policy_channel == "sender-email" and is_null_sender(sender):
        return "recipient-email"
    return policy_channel


_EXTENSIONS = {"7z": ".7z", "office": ".doc", "pdf": ".pdf"}


def unnamed_file_name(attachment: Attachment) -> str:
    """A name for a converted part that gives none: what it is, as its bytes and type say
    (body text that carried a file, a forwarded message, an archive)."""
    if attachment.zip.verdict is not ZipVerdict.NOT_ZIP:
        return "attachment.zip"
    if attachment.container is not None and attachment.container.kind in _EXTENSIONS:
        return "attachment" + _EXTENSIONS[attachment.container.kind]
    if attachment.content_type.startswith("message/"):
        return "message.eml"
    if attachment.content_type == "text/html":
        return "message.html"
    if attachment.content_type.startswith("text/"):
        return "message.txt"
    return "attachment.bin"


class TransferWriter:
    def __init__(self, db: Database, blobs: BlobStore, master_keys: KeyRing | bytes,
                 chunk_size: int):
        self._db = db
        self._controls = ControlsStore(db)
        self._blobs = blobs
        # What is written here is sealed and hashed under the current key only.
        self._master_key = key_ring(master_keys).current
        self._password_key = derive_key(self._master_key, DOWNLOAD_PASSWORD_KEY)
        self._chunk_size = chunk_size

    async def store(
        self, envelope: Envelope, decision: Decision, facts: MessageFacts, now: datetime
    ) -> StoredTransfer:
        stored = await asyncio.to_thread(self._store, envelope, decision, facts, now)
        # Its links go out next: the transfer behind them must survive a power cut first.
        await self._db.barrier.flush_deferred()
        return stored

    def _store(
        self, envelope: Envelope, decision: Decision, facts: MessageFacts, now: datetime
    ) -> StoredTransfer:
        existing = self._db.transfer_by_fingerprint(facts.fingerprint)
        # A retry reuses the files stored by the first attempt, unless their links have expired.
        if existing is not None and existing.state in ("pending", "active") \
                and existing.expires_at > now:
            try:
                return self._issue(envelope, decision, facts, now, existing)
            except _TransferGone:
                pass  # the purge took it since we looked: the files are stored again
        return self._issue(envelope, decision, facts, now, None)

    def _issue(
        self, envelope: Envelope, decision: Decision, facts: MessageFacts, now: datetime,
        existing: TransferRow | None,
    ) -> StoredTransfer:
        """Pending links on `existing`'s files, or on a new transfer when it is None."""
        reuse = existing is not None
        new_files: list[tuple[Attachment, StoredFile, bytes]] = []
        # The policy the transfer is made under is stored with it (transfers.policy). A reused
        # transfer keeps its own: its channel, its links' limit, its notices (a transfer from
        # before snapshots existed takes the policy of the day, as it always did).
        policy = decision.policy
        if reuse:
            transfer_id, expires_at = existing.id, existing.expires_at
            files = tuple(
                StoredFile(f.id, f.display_name, f.size, f.sha256, f.blob_id)
                for f in self._db.files_of(transfer_id)
            )
            policy = stored_policy(existing) or policy
            channel = existing.password_channel  # its password was made (or not) for this one
        else:
            transfer_id, expires_at = new_id(), now + policy.link_lifetime
            channel = password_channel(policy.password, envelope.mail_from)
        recipients = [r.address for r in decision.recipients if r.action.value == "convert"]
        links = tuple(IssuedLink(new_id(), r, new_token()) for r in recipients)
        manage_token = None if reuse else new_token()
        # The null sender gets no receipt (so nobody holds the management token) and no
        # download notices.
        to_sender = not is_null_sender(envelope.mail_from)
        try:
            if not reuse:
                for attachment in decision.to_convert:
                    new_files.append(self._write_blob(attachment))
                files = tuple(stored for _, stored, _ in new_files)
            crash_point("store.blobs_written")
            with self._db.transaction():
                # Checked in the commit that issues the links: a purge claims a transfer in a
                # commit of its own, and spares one given a link since its cut-off.
                if reuse and not self._db.reusable(transfer_id, now):
                    raise _TransferGone(transfer_id)
                if not reuse:
                    self._insert_transfer(
                        transfer_id, envelope, decision, facts, now, expires_at, channel
                    )
                    self._controls.insert(
                        transfer_id=transfer_id, manage_token_hash=hash_token(manage_token),
                        verify_recipient=policy.verify_recipient,
                        notify_sender=policy.notify_sender if to_sender else "never",
                        max_expires_at=now + policy.max_link_lifetime,
                    )
                    for position, (attachment, stored, wrapped) in enumerate(new_files):
                        self._db.insert_file(
                            id=stored.file_id, transfer_id=transfer_id,
                            display_name=stored.display_name,
                            content_type=attachment.content_type, size=stored.size,
                            sha256=stored.sha256, blob_id=stored.blob_id, wrapped_key=wrapped,
                            position=position,
                        )
                for link in links:
                    self._db.insert_link(
                        id=link.link_id, transfer_id=transfer_id, recipient=link.recipient,
                        token_hash=hash_token(link.token), state="pending",
                        max_downloads=policy.max_downloads, download_count=0,
                        created_at=now,
                    )
        except BaseException:
            # Nothing of a failed store may stay behind: the sender will retry the whole message.
            for _, stored, _ in new_files:
                self._blobs.delete(stored.blob_id)
            raise
        crash_point("store.committed")
        return StoredTransfer(
            transfer_id, files, links, expires_at, channel, reused=reuse,
            manage_token=manage_token if to_sender else None, policy=policy,
        )

    def _write_blob(self, attachment: Attachment) -> tuple[Attachment, StoredFile, bytes]:
        info = self._blobs.write(_chunks(attachment.data, self._chunk_size))
        name = attachment.filename or unnamed_file_name(attachment)
        stored = StoredFile(new_id(), name, info.size, info.sha256, info.blob_id)
        return attachment, stored, info.wrapped_key

    def _insert_transfer(
        self, transfer_id: str, envelope: Envelope, decision: Decision,
        facts: MessageFacts, now: datetime, expires_at: datetime, channel: str,
    ) -> None:
        password_hash = password_sealed = None
        if channel != "none":
            # Made here, kept only hashed (to check) and sealed (until the channel has sent it).
            password = generate_password(decision.policy.password_length)
            password_hash = hash_generated_password(password, self._password_key)
            password_sealed = seal_small(self._master_key, transfer_id.encode(), password.encode())
        self._db.insert_transfer(
            id=transfer_id, fingerprint=facts.fingerprint, message_id=facts.message_id,
            sender=envelope.mail_from, department=decision.department, subject=facts.subject,
            created_at=now, expires_at=expires_at, state="pending", password_channel=channel,
            password_hash=password_hash, password_sealed=password_sealed,
            locale=decision.policy.locale, policy=policy_to_json(decision.policy),
        )

    async def discard(self, transfer: StoredTransfer) -> None:
        """Undo a transfer none of whose links was delivered: no blob, no reachable link."""
        await asyncio.to_thread(self._discard, transfer)

    def _discard(self, transfer: StoredTransfer) -> None:
        self._db.fail_links([link.link_id for link in transfer.links])
        if any(link.state == "active" for link in self._db.links_of(transfer.transfer_id)):
            return  # an earlier attempt delivered some links: the files must stay
        for stored in transfer.files:
            self._blobs.delete(stored.blob_id)
        self._db.mark_purged(transfer.transfer_id, state="failed")
