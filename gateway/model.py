"""The typed objects that flow between the pipeline stages.

receive → classify → decide → store → rewrite → sign → deliver → answer.
Each stage takes what the previous one produced; nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Envelope:
    """What the SMTP client told us, apart from the content."""

    mail_from: str  # "" is the null sender (MAIL FROM:<>): bounces, reports, auto-replies
    rcpt_tos: tuple[str, ...]
    peer: str = ""
    helo: str = ""
    smtputf8: bool = False
    body_8bit: bool = False


class ZipVerdict(enum.Enum):
    """What the bytes of an attachment are, as far as ZIP is concerned."""

    NOT_ZIP = "not-zip"
    PLAIN_ZIP = "plain-zip"
    ENCRYPTED_ZIP = "encrypted-zip"
    # Starts like a ZIP but cannot be read: kept from travelling like an encrypted one.
    CORRUPT_ZIP = "corrupt-zip"


@dataclass(frozen=True)
class ZipMember:
    name: str  # display name only, never joined to a path
    encrypted: bool
    method: int  # compression method as stored (99 = WinZip AES)
    encryption: str  # "none" | "zipcrypto" | "aes" | "strong"
    compressed_size: int
    uncompressed_size: int


@dataclass(frozen=True)
class ZipReport:
    verdict: ZipVerdict
    members: tuple[ZipMember, ...] = ()
    reason: str = ""  # why CORRUPT_ZIP, for the log
    # members that are ZIPs themselves ("double ZIP"): by name, or for unencrypted members by bytes
    nested_zip_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerReport:
    """What the bytes of an attachment that is not a ZIP are, as far as encryption goes."""

    kind: str  # "7z" | "office" | "pdf" | "none"
    encrypted: bool = False
    reason: str = ""  # for the log: what was seen, or why the structure could not be read


class Finding(enum.IntEnum):
    """What a look into a file's content found, ordered by weight: a file's finding is the
    heaviest of what it holds."""

    CLEAN = 0
    OPAQUE = 1  # encrypted to a recipient's key (S/MIME, OpenPGP): unreadable by anyone else
    UNINSPECTABLE = 2  # a container that cannot be opened here: held back like an encrypted one
    ENCRYPTED = 3  # an encrypted archive or a password-protected file


@dataclass(frozen=True)
class ContentReport:
    finding: Finding
    reason: str = ""  # for the log and the notes: what was found and where (ASCII)

    @property
    def clean(self) -> bool:
        return self.finding is Finding.CLEAN


@dataclass(frozen=True)
class Attachment:
    """One leaf MIME part that carries a file.

    `path` locates the part in the parsed tree: the indices taken from the root through
    each multipart's get_payload() list, and through message/rfc822 wrappers (index 0).
    """

    path: tuple[int, ...]
    filename: str  # decoded (RFC 2047 / RFC 2231), sanitised for display; may be ""
    content_type: str
    data: bytes  # transfer-decoded bytes
    zip: ZipReport
    inside_rfc822: bool = False
    container: ContainerReport | None = None  # filled for attachments that are not ZIPs
    # What a look into its content found (an encrypted archive anywhere in it, or something
    # that cannot be opened); None when the message was not inspected that deeply.
    content: ContentReport | None = None
    inside_signed: bool = False  # a genuine S/MIME or PGP signature covers this part
    in_body: bool = False  # body text (not a file) that carries a file in its text

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Classification:
    attachments: tuple[Attachment, ...]
    # a genuine S/MIME or PGP/MIME signature covers some of the message
    signed: bool = False
    # parts genuinely encrypted to a recipient's key (S/MIME, OpenPGP): why, for the policy
    opaque: tuple[str, ...] = ()
    # why the message cannot be inspected even though it parses (a message/partial fragment,
    # an encrypted archive outside any part): refused when it goes out
    uninspectable: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def signed_or_encrypted(self) -> bool:
        return self.signed or bool(self.opaque)


class Action(enum.Enum):
    PASS = "pass"  # deliver the original bytes untouched
    CONVERT = "convert"  # deliver a rewritten copy with this recipient's own link


@dataclass(frozen=True)
class RecipientDecision:
    address: str
    internal: bool
    action: Action


@dataclass(frozen=True)
class Refusal:
    """Why the whole message is refused (always a 5xx: resending the same mail cannot help)."""

    enhanced: str  # RFC 3463 code, e.g. "5.7.0"
    text: str  # ASCII, for the sender's bounce


@dataclass(frozen=True)
class Decision:
    department: str
    policy: "object"  # gateway.config.Policy; typed loosely to keep model free of config
    recipients: tuple[RecipientDecision, ...]
    to_convert: tuple[Attachment, ...]  # the parts that leave as a link
    reason: str  # short word for the log: "pass", "convert", "internal", "refused", ...
    refusal: Refusal | None = None

    @property
    def converting(self) -> bool:
        return any(r.action is Action.CONVERT for r in self.recipients) and bool(self.to_convert)


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    display_name: str
    size: int
    sha256: str
    blob_id: str


@dataclass(frozen=True)
class IssuedLink:
    link_id: str
    recipient: str
    token: str  # plaintext token: only ever placed in that recipient's mail, stored hashed


@dataclass(frozen=True)
class StoredTransfer:
    transfer_id: str
    files: tuple[StoredFile, ...]
    links: tuple[IssuedLink, ...]
    expires_at: datetime  # aware, UTC
    password_channel: str  # "none" | "recipient-email" | "sender-email" | ...
    reused: bool = False  # a retry of a message whose files were stored by an earlier attempt
    # The sender's management token, in clear only between storing and queuing the receipt.
    manage_token: str | None = None
    # The policy the transfer was made under (gateway.config.Policy, as stored with it): a
    # retry that reuses the transfer keeps it, whatever the configuration says now.
    policy: "object | None" = None

    def link_for(self, recipient: str) -> IssuedLink:
        for link in self.links:
            if link.recipient == recipient:
                return link
        raise KeyError(recipient)


@dataclass(frozen=True)
class OutgoingMessage:
    """One transaction to the next hop."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # CRLF line endings, not dot-stuffed
    link_id: str | None = None  # set for a rewritten per-recipient copy
    smtputf8: bool = False
    body_8bit: bool = False
    # The relay made every line end CRLF already (its first stage, the rewriter, the signer):
    # the next hop need not read the whole message again to make sure.
    crlf_only: bool = False


@dataclass(frozen=True)
class DeliveryResult:
    """The next hop's answer to one OutgoingMessage."""

    accepted: bool
    code: int
    message: str
    rejected_recipients: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def temporary(self) -> bool:
        return not self.accepted and 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return not self.accepted and self.code >= 500
