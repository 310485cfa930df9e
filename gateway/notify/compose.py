"""Turn one outbox item into the mail (or webhook call) it stands for, ready to send.

Everything comes from the item, its sealed secrets and the store as they are now, never from
the clock or chance: a resend after a crash is the same message (same Message-ID, same bytes
before signing), so a receiver can drop the duplicate. An item whose secret, transfer or
link is gone raises ComposeError: there is nothing left to send.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from gateway.model import OutgoingMessage
from gateway.notify import ComposeError
from gateway.notify.dsn import ReportedRecipient, make_report
from gateway.notify.webhook import WebhookCall
from gateway.outbound.dkim import DkimSigner
from gateway.presentation import LOCALES, format_expiry, human_size
from gateway.store.crypto import IntegrityError, open_small
from gateway.store.db import Database, FileRow, LinkRow, TransferRow
from gateway.store.keys import KeyRing, key_ring
from gateway.store.outbox import OutboxItem

# Which secret each kind cannot do without.
_NEEDED_SECRET = {
    "password-recipient": "password", "password-sender": "password", "otp": "code",
    "receipt": "manage_token", "webhook-password": "password",
}  # fmt: skip
# Kinds addressed to a link's recipient: they need that link still active.
_TO_RECIPIENT = frozenset({"password-recipient", "otp", "webhook-password", "password-replaced"})
# Kinds that thread next to the mail they belong to.
_WITHOUT_TRANSFER = frozenset({"virus-refused", "dsn"})
_THREADED = frozenset({"password-recipient", "password-sender", "otp", "password-replaced", "dsn"})
# A delivery status notification (RFC 3464) answers a message: RFC 3834's "auto-replied".
_AUTO_SUBMITTED = {"dsn": "auto-replied"}
_FROM_NAME = {"ja": "メールゲートウェイ", "en": "ppap-gateway"}
_NO_SUBJECT = {"ja": "（件名なし）", "en": "(no subject)"}
_NO_NAME = {"ja": "（名前なし）", "en": "(no name)"}
_ALL_FILES = {"ja": "すべてのファイル（一括）", "en": "all files (one ZIP)"}
_FAILED_LABEL = {
    "ja": {
        "password-recipient": "パスワードのお知らせ（宛先の方へのメール）",
        "password-sender": "パスワードのお知らせ（送信者へのメール）",
        "webhook-password": "パスワードのお知らせ（Webhook 連携）",
        "receipt": "送信完了のお知らせ", "download-notice": "ダウンロードのお知らせ",
        "otp": "確認コードのお知らせ", "otp-locked": "確認コードのロックのお知らせ",
    },
    "en": {
        "password-recipient": "password notice (email to the recipient)",
        "password-sender": "password notice (email to you)",
        "webhook-password": "password notice (webhook)",
        "receipt": "sending receipt", "download-notice": "download notification",
        "otp": "verification code", "otp-locked": "verification codes locked",
    },
}  # fmt: skip
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_MAX_TEXT = 200
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x5a\x5e-\x7e]+>")
_PLAIN_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f\"'<>\\]+", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
# Dot-atoms of RFC 6532: atext plus any non-ASCII character.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_UTF8_ATOMS = re.compile(rf"{_ATEXT}(\.{_ATEXT})*")
_CODE = re.compile(r"[0-9]{4,10}")
_FAILED_STATUS = re.compile(r"5\.\d{1,3}\.\d{1,3}")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _refused_message(item: OutboxItem) -> TransferRow:
    """A refused mail described as a transfer that never was (nothing stored, no links), so
    that subject, sender and threading work as for any other notice."""
    payload = item.payload if isinstance(item.payload, dict) else {}

    def text(key: str) -> str:
        value = payload.get(key)
        return value if isinstance(value, str) else ""

    locale = text("locale")
    return TransferRow(
        id="", fingerprint="", message_id=text("message_id"), sender=text("sender"),
        department="", subject=text("subject"), created_at=item.created_at,
        expires_at=item.created_at, state="refused", password_channel="none",
        password_hash=None, password_sealed=None, locale=locale if locale in LOCALES else "ja",
    )


_ENCODED_WORD_START = re.compile(r"=\?(?=[^?\s]*\?[bBqQ]\?)")


def one_line(text: str, limit: int = _MAX_TEXT) -> str:
    """Stored text made safe for a header or a body line: no line breaks, controls or bidi
    overrides, runs of blanks collapsed, at most `limit` characters."""
    kept = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else
        "\ufffd" if unicodedata.category(ch) == "Cs" else ch  # a lone surrogate cannot be sent
        for ch in text if ch not in _BIDI_CONTROLS
    )
    # What still reads as an RFC 2047 word would be decoded again by the header parser (and
    # an unknown charset then cannot be written out): a space keeps it literal text.
    kept = " ".join(_ENCODED_WORD_START.sub("= ?", kept).split())
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


@dataclass(frozen=True)
class _About:
    """What one item is about, as the store and its seal hold it now."""

    item: OutboxItem
    transfer: TransferRow
    link: LinkRow | None
    secrets: dict[str, str]

    @property
    def locale(self) -> str:
        return self.transfer.locale if self.transfer.locale in LOCALES else "ja"

    @property
    def payload(self) -> dict[str, Any]:
        return self.item.payload if isinstance(self.item.payload, dict) else {}


class NoticeComposer:
    def __init__(
        self, db: Database, templates: jinja2.Environment, signer: DkimSigner, *,
        from_address: str, public_url: str, timezone: ZoneInfo, master_key: KeyRing | bytes,
        webhook_url: str = "",
    ) -> None:
        """`master_key`: the master keys' ring (one key alone will do) sealed secrets open with."""
        if not _PLAIN_URL.fullmatch(public_url):
            raise ValueError(f"not a plain http(s) URL: {public_url!r}")
        master_keys = key_ring(master_key)  # ValueError for a key of the wrong size
        self._db = db
        self._templates = templates
        self._signer = signer
        sender_box = _mailbox(from_address)
        if sender_box is None:
            raise ValueError(f"not a plain address: {from_address!r}")
        self._from = sender_box
        self._from_address = from_address
        self._id_domain = _message_id_domain(from_address)
        self._public_url = public_url.rstrip("/")
        self._zone = timezone
        self._master_keys = master_keys
        self._webhook_url = webhook_url
        self._mail_contexts = {
            "password-recipient": self._password_recipient,
            "password-sender": self._password_sender,
            "receipt": self._receipt,
            "download-notice": self._download_notice,
            "otp": self._otp,
            "otp-locked": self._otp_locked,
            "give-up-note": self._give_up_note,
            "password-retired": self._password_retired,
            "password-replaced": self._password_replaced,
            "blocked-note": self._blocked_note,
            "virus-refused": self._virus_refused,
            "dsn": self._dsn,
        }

    def compose(self, item: OutboxItem) -> OutgoingMessage | WebhookCall:
        """The message or call `item` stands for; ComposeError if there is none to make."""
        if item.kind != "webhook-password" and item.kind not in self._mail_contexts:
            raise ComposeError(f"unknown outbox kind {item.kind!r}")
        about = self._about(item)
        if item.kind == "webhook-password":
            return self._webhook(about)
        to, context = self._mail_contexts[item.kind](about)
        context.setdefault("subject", self._subject(about))
        context.setdefault("sender", one_line(about.transfer.sender))
        context.setdefault("expires", self._local_time(about.transfer.expires_at, about.locale))
        module = self._templates.get_template(
            f"mail/{item.kind}.{about.locale}.txt"
        ).make_module(context)
        subject = one_line(str(module.mail_subject), 300)
        if item.kind == "dsn":
            return self._report(about, to, subject, str(module), context["recipients"])
        return self._mail(about, to, subject, str(module))

    # -- what an item is about ---------------------------------------------------------

    def _about(self, item: OutboxItem) -> _About:
        if item.kind in _WITHOUT_TRANSFER:
            return _About(item, _refused_message(item), None, {})
        transfer = self._db.transfer(item.transfer_id) if item.transfer_id else None
        if transfer is None:
            raise ComposeError(f"outbox item {item.id}: no such transfer")
        if transfer.state in ("purged", "failed"):
            raise ComposeError(f"outbox item {item.id}: transfer is {transfer.state}")
        link = None
        if item.link_id is not None:
            link = next((l for l in self._db.links_of(transfer.id) if l.id == item.link_id), None)
        if item.kind in _TO_RECIPIENT and (link is None or link.state != "active"):
            state = "missing" if link is None else link.state
            raise ComposeError(f"outbox item {item.id}: link is {state}")
        return _About(item, transfer, link, self._secrets(item))

    def _secrets(self, item: OutboxItem) -> dict[str, str]:
        needed = _NEEDED_SECRET.get(item.kind)
        if needed is None:
            return {}
        if item.sealed is None:
            raise ComposeError(f"outbox item {item.id}: its secret is gone")
        try:
            opened = json.loads(open_small(self._master_keys, item.id.encode(), item.sealed))
        except (IntegrityError, ValueError) as error:
            raise ComposeError(f"outbox item {item.id}: sealed secret unusable") from error
        value = opened.get(needed) if isinstance(opened, dict) else None
        if not isinstance(value, str) or not _secret_shape_ok(needed, value):
            raise ComposeError(f"outbox item {item.id}: sealed {needed} missing or malformed")
        return {needed: value}

    # -- one context per kind: (addressee, template values) --------------------------

    def _password_recipient(self, about: _About) -> tuple[str, dict[str, Any]]:
        assert about.link is not None  # _about made sure
        return about.link.recipient, {"password": about.secrets["password"]}

    def _password_sender(self, about: _About) -> tuple[str, dict[str, Any]]:
        return about.transfer.sender, {
            "password": about.secrets["password"], "recipients": self._recipients(about),
        }

    def _receipt(self, about: _About) -> tuple[str, dict[str, Any]]:
        return about.transfer.sender, {
            "recipients": self._recipients(about),
            "files": [self._file(f, about.locale) for f in self._db.files_of(about.transfer.id)],
            "manage_url": f"{self._public_url}/m/{about.secrets['manage_token']}",
        }

    def _download_notice(self, about: _About) -> tuple[str, dict[str, Any]]:
        payload = about.payload
        file = payload.get("file")
        return about.transfer.sender, {
            "recipient": self._named_recipient(about),
            "file": one_line(file) if isinstance(file, str) and file.strip()
            else _ALL_FILES[about.locale],
            "at": self._local_time(_instant(payload.get("at"), about.item.id), about.locale),
            "first": payload.get("first") is True,
        }

    def _otp(self, about: _About) -> tuple[str, dict[str, Any]]:
        assert about.link is not None
        minutes = about.payload.get("minutes", 10)
        if not isinstance(minutes, int) or isinstance(minutes, bool) or not 0 < minutes <= 1440:
            raise ComposeError(f"outbox item {about.item.id}: bad minutes {minutes!r}")
        return about.link.recipient, {"code": about.secrets["code"], "minutes": minutes}

    def _otp_locked(self, about: _About) -> tuple[str, dict[str, Any]]:
        """To the sender: a link's budget of codes was spent, so it takes no more codes until
        they unlock it on the management page."""
        payload = about.payload
        reason = payload.get("reason")
        return about.transfer.sender, {
            "recipient": self._named_recipient(about),
            "at": self._local_time(_instant(payload.get("at"), about.item.id), about.locale),
            "reason": reason if reason in ("sends", "failures") else "sends",
        }

    def _give_up_note(self, about: _About) -> tuple[str, dict[str, Any]]:
        payload = about.payload
        failed_kind = payload.get("failed_kind")
        failed_kind = failed_kind if isinstance(failed_kind, str) else ""
        label = _FAILED_LABEL[about.locale].get(failed_kind) or one_line(failed_kind or "?", 60)
        error = payload.get("error")
        to_sender = failed_kind not in _TO_RECIPIENT and "recipient" not in payload
        return about.transfer.sender, {
            "failed_label": label,
            "failed_to": one_line(about.transfer.sender) if to_sender
            else self._named_recipient(about),
            "error": one_line(error) if isinstance(error, str) and error.strip() else "-",
            "failed_about": "password" if "password" in failed_kind
            else "code" if failed_kind == "otp" else "",
        }

    def _password_retired(self, about: _About) -> tuple[str, dict[str, Any]]:
        """To the sender: their PPAP password mail was not passed on; the link serves the files."""
        return about.transfer.sender, {"recipients": self._recipients(about)}

    def _password_replaced(self, about: _About) -> tuple[str, dict[str, Any]]:
        """To a recipient, instead of the password mail: the link needs no ZIP password any more
        (a download password, where the policy sets one, still does)."""
        assert about.link is not None
        return about.link.recipient, {
            "download_password": about.transfer.password_channel != "none",
            "scanned": about.payload.get("scanned") is True,
            "by_form": about.payload.get("via") == "sender-form",
        }

    def _blocked_note(self, about: _About) -> tuple[str, dict[str, Any]]:
        """To the sender, or the configured admin address: which file, which signature."""
        payload = about.payload
        to = payload.get("address") or about.transfer.sender
        if not isinstance(to, str) or _mailbox(to) is None:
            raise ComposeError(f"outbox item {about.item.id}: bad address")
        file, signature = payload.get("file"), payload.get("signature")
        return to, {
            "file": one_line(file) if isinstance(file, str) else "?",
            "signature": one_line(signature, 200) if isinstance(signature, str) else "?",
            "for_admin": bool(payload.get("address")),
        }

    def _virus_refused(self, about: _About) -> tuple[str, dict[str, Any]]:
        """To the admin: a new mail was refused at SMTP time for an infected attachment (its
        sender already has the bounce); nothing was stored, so the payload says it all."""
        payload = about.payload
        to = payload.get("address")
        if not isinstance(to, str) or _mailbox(to) is None:
            raise ComposeError(f"outbox item {about.item.id}: bad address")
        file, signature = payload.get("file"), payload.get("signature")
        count = payload.get("recipients")
        return to, {
            "file": one_line(file) if isinstance(file, str) and file else "?",
            "signature": one_line(signature, 200) if isinstance(signature, str) else "?",
            "recipients": count if isinstance(count, int) else "?",
            "at": self._local_time(about.item.created_at, about.locale),
        }

    def _dsn(self, about: _About) -> tuple[str, dict[str, Any]]:
        """To the sender: the recipients the next hop refused for good after others got the
        message (pipeline/dsn_step.py). Never to the null sender, whatever the payload says."""
        payload = about.payload
        if not about.transfer.sender:
            raise ComposeError(f"outbox item {about.item.id}: no report to the null sender")
        listed = payload.get("recipients")
        if not isinstance(listed, list) or not listed:
            raise ComposeError(f"outbox item {about.item.id}: no refused recipients")
        reported = [self._reported(entry, about.item.id) for entry in listed]
        return about.transfer.sender, {
            "recipients": reported,
            "at": self._local_time(_instant(payload.get("arrival"), about.item.id), about.locale),
        }

    def _reported(self, entry: object, item_id: str) -> ReportedRecipient:
        fields = entry if isinstance(entry, dict) else {}
        address, status, diagnostic = (fields.get(k) for k in ("address", "status", "diagnostic"))
        if not isinstance(address, str) or not one_line(address):
            raise ComposeError(f"outbox item {item_id}: a refused recipient without an address")
        if not isinstance(status, str) or not _FAILED_STATUS.fullmatch(status):
            status = "5.0.0"
        diagnostic = diagnostic if isinstance(diagnostic, str) else ""
        # The next hop's words go into a header field: one line of printable ASCII.
        diagnostic = "".join(c if " " <= c <= "~" else "?" for c in one_line(diagnostic, 500))
        return ReportedRecipient(one_line(address, 320), status, diagnostic or "550")

    def _webhook(self, about: _About) -> WebhookCall:
        if not self._webhook_url:
            raise ComposeError(f"outbox item {about.item.id}: no webhook URL configured")
        assert about.link is not None
        body = {
            "event": "password",
            "transfer_id": about.transfer.id,
            "recipient": about.link.recipient,
            "password": about.secrets["password"],
            "expires_at": about.transfer.expires_at.astimezone(self._zone).isoformat(),
            "subject": one_line(about.transfer.subject, 500),
            "sender": about.transfer.sender,
        }
        data = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return WebhookCall(url=self._webhook_url, body=data.encode("utf-8"))

    # -- shared values ---------------------------------------------------------------

    def _subject(self, about: _About) -> str:
        return one_line(about.transfer.subject) or _NO_SUBJECT[about.locale]

    def _recipients(self, about: _About) -> list[str]:
        listed = about.payload.get("recipients")
        if isinstance(listed, list) and all(isinstance(r, str) for r in listed):
            return [one_line(r) for r in listed]
        # Once each: a retry may have activated an earlier attempt's link to the same address.
        links = self._db.links_of(about.transfer.id)
        return list(dict.fromkeys(one_line(l.recipient) for l in links if l.state == "active"))

    def _named_recipient(self, about: _About) -> str:
        named = about.payload.get("recipient")
        if isinstance(named, str) and named.strip():
            return one_line(named)
        return one_line(about.link.recipient) if about.link is not None else "-"

    def _file(self, row: FileRow, locale: str) -> dict[str, str]:
        return {"name": one_line(row.display_name) or _NO_NAME[locale],
                "size": human_size(row.size, locale)}

    def _local_time(self, moment: datetime, locale: str) -> str:
        return format_expiry(moment.astimezone(self._zone), locale)

    # -- the message -----------------------------------------------------------------

    def _mail(self, about: _About, to: str, subject: str, body: str) -> OutgoingMessage:
        message, utf8 = self._addressed(about, to, subject)
        text = _crlf_body(body)
        plain = text.isascii() and max(map(len, text.split("\r\n"))) <= 998
        message.set_content(text, charset="utf-8", cte="7bit" if plain else "base64")
        return OutgoingMessage(
            mail_from=self._from_address, rcpt_tos=(to,), data=self._signed(message),
            smtputf8=utf8,
        )

    def _report(self, about: _About, to: str, subject: str, body: str,
                reported: list[ReportedRecipient]) -> OutgoingMessage:
        """A delivery status notification: multipart/report, sent from the null sender
        (RFC 5321 4.5.5), so that nothing ever answers it."""
        message, utf8 = self._addressed(about, to, subject)
        headers = _base64_bytes(about.payload.get("headers"), about.item.id)
        make_report(
            message, text=_crlf_body(body), reporting_mta=self._reporting_mta(about),
            arrival=_instant(about.payload.get("arrival"), about.item.id).astimezone(self._zone),
            recipients=reported, headers=headers, boundary=f"=_report_{about.item.id}",
        )
        return OutgoingMessage(
            mail_from="", rcpt_tos=(to,), data=self._signed(message), smtputf8=utf8,
        )

    def _addressed(self, about: _About, to: str, subject: str) -> tuple[EmailMessage, bool]:
        """A message with the header fields every notice has; and whether it needs SMTPUTF8."""
        recipient = _mailbox(to)
        if recipient is None:
            raise ComposeError(f"outbox item {about.item.id}: not a mailable address: {to!r}")
        utf8 = not (self._from_address.isascii() and to.isascii())
        message = EmailMessage(policy=email_policy.SMTPUTF8 if utf8 else email_policy.SMTP)
        message["From"] = Address(_FROM_NAME[about.locale], addr_spec=self._from.addr_spec)
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = format_datetime(about.item.created_at.astimezone(self._zone))
        message["Message-ID"] = f"<notice-{about.item.id}@{self._id_domain}>"
        original = _MSG_ID.search(about.transfer.message_id or "")
        if about.item.kind in _THREADED and original:
            message["In-Reply-To"] = original.group(0)
            message["References"] = original.group(0)
        message["Auto-Submitted"] = _AUTO_SUBMITTED.get(about.item.kind, "auto-generated")
        message["X-PPAP-Gateway"] = "notice"
        return message, utf8

    def _signed(self, message: EmailMessage) -> bytes:
        return self._signer.sign(re.sub(rb"\r\n|\r|\n", b"\r\n", message.as_bytes()))

    def _reporting_mta(self, about: _About) -> str:
        named = about.payload.get("reporting_mta")
        return named if isinstance(named, str) and _HOSTNAME.fullmatch(named) else self._id_domain


def _mailbox(address: str) -> Address | None:
    """A bare addr-spec as a header Address; None for anything that cannot be mailed."""
    if not address or any(ch.isspace() or not ch.isprintable() for ch in address):
        return None
    try:
        mailbox = Address(addr_spec=address)
    except (ValueError, IndexError, HeaderParseError):
        mailbox = _utf8_mailbox(address)
    return mailbox if mailbox is not None and mailbox.domain else None


def _utf8_mailbox(address: str) -> Address | None:
    """RFC 6532 mailboxes, which the stdlib parser rejects: plain dot-atoms only."""
    local, _, domain = address.rpartition("@")
    if address.isascii() or not _UTF8_ATOMS.fullmatch(local) or not _UTF8_ATOMS.fullmatch(domain):
        return None
    return Address(username=local, domain=domain)


def _message_id_domain(from_address: str) -> str:
    domain = from_address.rpartition("@")[2].strip().rstrip(".").lower()
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "ppap-gateway.invalid"
    return ascii_domain if re.fullmatch(r"[a-z0-9.-]+", ascii_domain) else "ppap-gateway.invalid"


def _secret_shape_ok(name: str, value: str) -> bool:
    if name == "code":
        return bool(_CODE.fullmatch(value))
    if name == "manage_token":
        return bool(_TOKEN.fullmatch(value))
    return 0 < len(value) <= 128 and value.isprintable() and not any(c.isspace() for c in value)


def _base64_bytes(value: object, item_id: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except ValueError:
        raise ComposeError(f"outbox item {item_id}: headers are not base64") from None


def _instant(value: object, item_id: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise ComposeError(f"outbox item {item_id}: 'at' is not an ISO time: {value!r}")
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _crlf_body(rendered: str) -> str:
    """CRLF line ends, no trailing blanks, one final line end."""
    lines = [line.rstrip() for line in re.split(r"\r\n|\r|\n", rendered)]
    return "\r\n".join(lines).strip("\r\n") + "\r\n"
