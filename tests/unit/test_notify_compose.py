"""The gateway's own mails and webhook body: right party, right content, sane headers, no link
where there must be none, stable across resends, and nothing to send for what is gone."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import dkim
import jinja2
import pytest

from gateway.config import BUNDLED_TEMPLATES
from gateway.model import OutgoingMessage
from gateway.notify import ComposeError
from gateway.notify.compose import NoticeComposer
from gateway.notify.webhook import WebhookCall
from gateway.outbound.dkim import DkimKey, DkimSigner
from gateway.outbound.dkim_keys import GeneratedKey, generate_dkim_key
from gateway.pipeline.notice import make_template_env
from gateway.store.controls import ControlsStore
from gateway.store.crypto import seal_small
from gateway.store.db import Database
from gateway.store.outbox import OutboxItem, OutboxStore, new_outbox_id
from gateway.store.passwords import hash_password, hash_token, new_token

TEMPLATES = BUNDLED_TEMPLATES  # gateway/templates/, shipped inside the package
TOKYO = ZoneInfo("Asia/Tokyo")
DOMAIN = "city.example.lg.jp"
FROM = f"ppap-gateway@{DOMAIN}"
SENDER = f"somu@{DOMAIN}"
TANAKA, SUZUKI, GONE = "tanaka@partner.example.com", "suzuki@other.example.net", "x@failed.example"
PUBLIC_URL = "https://files.city.example.lg.jp"
WEBHOOK_URL = "https://sms.example.lg.jp/hook"
SUBJECT = "【ご確認】見積書の送付について（2026年11月分）"
ORIGINAL_ID = "<20261126103000.4711@mail.city.example.lg.jp>"
PASSWORD = "Xk7#pQ2mWz9v"
NOW = datetime(2026, 11, 26, 1, 30, tzinfo=UTC)  # 10:30 JST
EXPIRES = NOW + timedelta(days=7)
FILES = (("見積書一式_2026年11月.zip", 6878), ("report.pdf", 1234567))


@cache
def password_hash() -> str:
    """PASSWORD hashed as the store hashes it; scrypt is slow by design, so once per run."""
    return hash_password(PASSWORD)


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKey:
    return generate_dkim_key(DOMAIN, "notice", tmp_path_factory.mktemp("dkim"), bits=1024)


@pytest.fixture(scope="module")
def templates() -> jinja2.Environment:
    return make_template_env(TEMPLATES)


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "meta.sqlite3")
    yield database
    database.close()


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def signer(dkim_key: GeneratedKey) -> DkimSigner:
    return DkimSigner([DkimKey(DOMAIN, "notice", dkim_key.key_path.read_bytes())])


@pytest.fixture
def composer(db, templates, signer, master_key) -> NoticeComposer:
    return make_composer(db, templates, signer, master_key)


def make_composer(db, templates, signer, master_key, **overrides) -> NoticeComposer:
    options = {"from_address": FROM, "public_url": PUBLIC_URL, "timezone": TOKYO,
               "master_key": master_key, "webhook_url": WEBHOOK_URL}
    options.update(overrides)
    return NoticeComposer(db, templates, signer, **options)


class Transfer:
    """A transfer stored as store_step.py stores one: files, controls, links made active
    (and one that failed), and the link tokens that must never appear in a notice."""

    def __init__(self, db: Database, master_key: bytes, *, locale: str = "ja",
                 subject: str = SUBJECT, sender: str = SENDER,
                 recipients: tuple[str, ...] = (TANAKA, SUZUKI)):
        self.id = secrets.token_hex(16)
        self.tokens: dict[str, str] = {}
        self.links: dict[str, str] = {}
        with db.transaction():
            db.insert_transfer(
                id=self.id, fingerprint=secrets.token_hex(16), message_id=ORIGINAL_ID,
                sender=sender, department="somu", subject=subject, created_at=NOW,
                expires_at=EXPIRES, password_channel="recipient-email", locale=locale,
                password_hash=password_hash(),
                password_sealed=seal_small(master_key, self.id.encode(), PASSWORD.encode()),
            )
            ControlsStore(db).insert(
                transfer_id=self.id, manage_token_hash=hash_token(new_token()),
                verify_recipient=True, notify_sender="first-download",
                max_expires_at=NOW + timedelta(days=30),
            )
            for position, (name, size) in enumerate(FILES):
                db.insert_file(
                    id=secrets.token_hex(16), transfer_id=self.id, display_name=name,
                    content_type="application/zip", size=size, sha256="0" * 64,
                    blob_id=secrets.token_hex(16), wrapped_key=b"k" * 60, position=position,
                )
            for recipient in (*recipients, GONE):
                link_id, token = secrets.token_hex(16), new_token()
                self.links[recipient], self.tokens[recipient] = link_id, token
                db.insert_link(id=link_id, transfer_id=self.id, recipient=recipient,
                               token_hash=hash_token(token), created_at=NOW)
        for recipient in recipients:
            db.activate_link(self.links[recipient], NOW)
        db.fail_links([self.links[GONE]])
        db.set_transfer_state(self.id, "active")


def queue(db: Database, master_key: bytes, kind: str, transfer: Transfer, *,
          link_for: str | None = None, payload: dict | None = None,
          secret: dict | None = None, seal_for: str | None = None) -> OutboxItem:
    item_id = new_outbox_id()
    sealed = None
    if secret is not None:
        sealed = seal_small(master_key, (seal_for or item_id).encode(), json.dumps(secret).encode())
    OutboxStore(db).enqueue(
        kind=kind, now=NOW, due_at=NOW + timedelta(minutes=5), item_id=item_id,
        payload=payload, sealed=sealed, transfer_id=transfer.id,
        link_id=transfer.links[link_for] if link_for else None,
    )
    item = OutboxStore(db).get(item_id)
    assert item is not None
    return item


def parsed(message: OutgoingMessage) -> EmailMessage:
    return message_from_bytes(message.data, policy=email_policy.default)


def body_of(message: OutgoingMessage) -> str:
    return parsed(message).get_content()


def dkim_valid(data: bytes, key: GeneratedKey) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return key.txt_value.encode() if name == key.txt_name.encode() else None

    return dkim.verify(data, dnsfunc=dnsfunc)


def password_item(
    db, master_key, locale: str = "ja", **transfer_options
) -> tuple[Transfer, OutboxItem]:
    transfer = Transfer(db, master_key, locale=locale, **transfer_options)
    item = queue(db, master_key, "password-recipient", transfer, link_for=TANAKA,
                 secret={"password": PASSWORD})
    return transfer, item


# -- password to the recipient ----------------------------------------------------------


@pytest.mark.parametrize(("locale", "prefix", "separate"), [
    ("ja", "【パスワードのお知らせ】", "別のメールでお送りしたダウンロード用のリンク"),
    ("en", "Password for: ", "sent in a separate email with a download link"),
])
def test_password_mail_goes_to_the_links_recipient_with_password_subject_and_sender(
    db, master_key, composer, locale: str, prefix: str, separate: str,
) -> None:
    _transfer, item = password_item(db, master_key, locale)
    message = composer.compose(item)
    assert isinstance(message, OutgoingMessage)
    assert message.rcpt_tos == (TANAKA,) and message.mail_from == FROM
    mail = parsed(message)
    assert mail["To"] == TANAKA and mail["Subject"] == prefix + SUBJECT
    body = body_of(message)
    assert PASSWORD in body and SUBJECT in body and SENDER in body and separate in body


@pytest.mark.parametrize("locale", ["ja", "en"])
def test_password_mail_never_carries_a_link_or_token(db, master_key, composer, locale: str) -> None:
    transfer, item = password_item(db, master_key, locale)
    message = composer.compose(item)
    text = message.data.decode("utf-8") + body_of(message)
    assert "http" not in text and PUBLIC_URL not in text and "/d/" not in text
    for token in transfer.tokens.values():
        assert token not in text


def test_password_mail_threads_under_the_original_message(db, master_key, composer) -> None:
    _transfer, item = password_item(db, master_key)
    mail = parsed(composer.compose(item))
    assert mail["In-Reply-To"] == ORIGINAL_ID and mail["References"] == ORIGINAL_ID


def test_a_mangled_original_message_id_is_left_out_not_copied(db, master_key, composer) -> None:
    _transfer, item = password_item(db, master_key)
    db.write("UPDATE transfers SET message_id = ? WHERE id = ?",
             ("<broken\r\nBcc: x@evil.example", item.transfer_id))
    mail = parsed(composer.compose(item))
    assert mail["In-Reply-To"] is None and mail["References"] is None and mail["Bcc"] is None


# -- password to the sender -------------------------------------------------------------


@pytest.mark.parametrize(("locale", "pass_on"), [
    ("ja", "電話やチャットなど、メール以外の方法"), ("en", "by phone or chat, not by email"),
])
def test_sender_password_mail_lists_active_recipients_and_asks_to_pass_it_by_phone(
    db, master_key, composer, locale: str, pass_on: str,
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    item = queue(db, master_key, "password-sender", transfer, secret={"password": PASSWORD})
    message = composer.compose(item)
    assert message.rcpt_tos == (SENDER,)
    body = body_of(message)
    assert PASSWORD in body and TANAKA in body and SUZUKI in body and pass_on in body
    assert GONE not in body  # its mail was never accepted
    assert "http" not in body
    assert parsed(message)["In-Reply-To"] == ORIGINAL_ID


def test_sender_password_mail_takes_recipients_from_the_payload_when_given(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "password-sender", transfer, secret={"password": PASSWORD},
                 payload={"recipients": [SUZUKI]})
    body = body_of(composer.compose(item))
    assert SUZUKI in body and TANAKA not in body


# -- receipt ----------------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "expiry", "sizes"), [
    ("ja", "2026年12月3日(木) 10:30 JST", ("6.7 KB", "1.2 MB")),
    ("en", "Thu, 3 Dec 2026 10:30 JST", ("6.7 KB", "1.2 MB")),
])
def test_receipt_lists_recipients_files_local_expiry_and_the_management_link(
    db, master_key, composer, locale: str, expiry: str, sizes: tuple[str, str],
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    manage_token = new_token()
    item = queue(db, master_key, "receipt", transfer, secret={"manage_token": manage_token})
    message = composer.compose(item)
    assert message.rcpt_tos == (SENDER,)
    body = body_of(message)
    assert f"{PUBLIC_URL}/m/{manage_token}" in body
    assert TANAKA in body and SUZUKI in body and GONE not in body
    assert all(name in body for name, _size in FILES) and all(size in body for size in sizes)
    assert expiry in body and PASSWORD not in body
    for token in transfer.tokens.values():
        assert token not in body
    assert parsed(message)["In-Reply-To"] is None  # only password and code mails thread


def test_receipt_names_a_recipient_once_though_a_crashed_attempts_link_opens_too(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key, locale="en")
    db.insert_link(id="crashed-attempt", transfer_id=transfer.id, recipient=TANAKA,
                   token_hash=hash_token(new_token()), created_at=NOW)
    db.activate_link("crashed-attempt", NOW)  # as a retry's commit does (activate_earlier_links)
    item = queue(db, master_key, "receipt", transfer, secret={"manage_token": new_token()})
    body = body_of(composer.compose(item))
    assert body.count(TANAKA) == 1 and body.count(SUZUKI) == 1


# -- download notice --------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "first", "expected"), [
    ("ja", True, ("【初回ダウンロード】", "2026年11月27日(金) 09:05 JST", "最初のダウンロード")),
    ("ja", False, ("【ダウンロード】", "2026年11月27日(金) 09:05 JST", "ダウンロードされました")),
    ("en", True, ("First download: ", "Fri, 27 Nov 2026 09:05 JST", "their first download")),
])
def test_download_notice_tells_the_sender_who_took_which_file_when(
    db, master_key, composer, locale: str, first: bool, expected: tuple[str, str, str],
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    item = queue(db, master_key, "download-notice", transfer, link_for=SUZUKI, payload={
        "recipient": SUZUKI, "file": FILES[0][0], "at": "2026-11-27T00:05:00+00:00",
        "first": first,
    })
    message = composer.compose(item)
    assert message.rcpt_tos == (SENDER,)
    prefix, when, wording = expected
    assert parsed(message)["Subject"] == prefix + SUBJECT
    body = body_of(message)
    assert SUZUKI in body and FILES[0][0] in body and when in body and wording in body


def test_download_notice_with_an_unreadable_time_is_a_compose_error(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "download-notice", transfer, payload={"at": "yesterday"})
    with pytest.raises(ComposeError):
        composer.compose(item)


@pytest.mark.parametrize(("locale", "expected"), [
    ("ja", ("【確認コードをロックしました】", "2026年11月27日(金) 09:05 JST", "誤った入力",
            "確認コードのロックを解除する")),
    ("en", ("Verification codes locked: ", "Fri, 27 Nov 2026 09:05 JST",
            "too many wrong verification codes were typed", "Unlock codes")),
])
def test_codes_locked_notice_tells_the_sender_which_recipient_when_why_and_how_to_unlock(
    db, master_key, composer, locale: str, expected: tuple[str, str, str, str],
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    item = queue(db, master_key, "otp-locked", transfer, link_for=TANAKA, payload={
        "recipient": TANAKA, "reason": "failures", "at": "2026-11-27T00:05:00+00:00",
    })
    message = composer.compose(item)
    assert message.rcpt_tos == (SENDER,)
    prefix, when, why, how = expected
    assert parsed(message)["Subject"] == prefix + SUBJECT
    body = body_of(message)
    assert TANAKA in body and when in body and why in body and how in body
    assert all(token not in body for token in transfer.tokens.values())


# -- one-time code ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "validity"), [("ja", "有効期限は10分間"), ("en", "valid for 10 minutes")]
)
def test_code_mail_goes_to_the_recipient_with_code_and_validity_and_no_link(
    db, master_key, composer, locale: str, validity: str,
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    item = queue(db, master_key, "otp", transfer, link_for=TANAKA, secret={"code": "048213"},
                 payload={"minutes": 10})
    message = composer.compose(item)
    assert message.rcpt_tos == (TANAKA,)
    body = body_of(message)
    assert "048213" in body and validity in body and SUBJECT in body and SENDER in body
    assert "http" not in message.data.decode() + body
    assert parsed(message)["References"] == ORIGINAL_ID


# -- give-up note -----------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "advice"), [
    ("ja", "電話など別の方法でパスワードをお伝えいただくか"),
    ("en", "tell them the password another way"),
])
def test_give_up_note_says_which_notice_failed_for_whom_without_the_password(
    db, master_key, composer, locale: str, advice: str,
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    item = queue(db, master_key, "give-up-note", transfer, link_for=TANAKA, payload={
        "failed_kind": "password-recipient", "error": "550 5.1.1 mailbox unavailable",
    })
    message = composer.compose(item)
    assert message.rcpt_tos == (SENDER,)
    body = body_of(message)
    assert TANAKA in body and "550 5.1.1 mailbox unavailable" in body and advice in body
    assert PASSWORD not in body and PASSWORD not in message.data.decode()


def test_give_up_note_for_a_receipt_names_the_sender_and_gives_no_password_advice(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key, locale="en")
    item = queue(db, master_key, "give-up-note", transfer,
                 payload={"failed_kind": "receipt", "error": "timeout"})
    body = body_of(composer.compose(item))
    assert "sending receipt" in body and SENDER in body and "password" not in body


# -- webhook ----------------------------------------------------------------------------


def test_webhook_body_carries_password_recipient_expiry_with_offset(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "webhook-password", transfer, link_for=TANAKA,
                 secret={"password": PASSWORD})
    call = composer.compose(item)
    assert isinstance(call, WebhookCall) and call.url == WEBHOOK_URL
    assert json.loads(call.body) == {
        "event": "password", "transfer_id": transfer.id, "recipient": TANAKA,
        "password": PASSWORD, "expires_at": "2026-12-03T10:30:00+09:00",
        "subject": SUBJECT, "sender": SENDER,
    }
    assert composer.compose(item).body == call.body


def test_webhook_without_a_configured_url_is_a_compose_error(
    db, master_key, templates, signer,
) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "webhook-password", transfer, link_for=TANAKA,
                 secret={"password": PASSWORD})
    with pytest.raises(ComposeError):
        make_composer(db, templates, signer, master_key, webhook_url="").compose(item)


# -- headers, bytes, signature ----------------------------------------------------------


def test_headers_say_who_when_and_that_the_mail_is_automatic(db, master_key, composer) -> None:
    _transfer, item = password_item(db, master_key)
    mail = parsed(composer.compose(item))
    assert mail["From"].addresses[0].addr_spec == FROM
    assert mail["From"].addresses[0].display_name == "メールゲートウェイ"
    assert mail["Date"] == "Thu, 26 Nov 2026 10:30:00 +0900"  # the item's creation, in JST
    assert mail["Message-ID"] == f"<notice-{item.id}@{DOMAIN}>"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["X-PPAP-Gateway"] == "notice"
    assert mail.get_content_type() == "text/plain" and mail.get_content_charset() == "utf-8"


@pytest.mark.parametrize("locale", ["ja", "en"])
def test_every_kind_is_signed_for_the_from_domain_and_verifies(
    db, master_key, composer, dkim_key, locale: str,
) -> None:
    transfer = Transfer(db, master_key, locale=locale)
    items = [
        queue(db, master_key, "password-recipient", transfer, link_for=TANAKA,
              secret={"password": PASSWORD}),
        queue(db, master_key, "password-sender", transfer, secret={"password": PASSWORD}),
        queue(db, master_key, "receipt", transfer, secret={"manage_token": new_token()}),
        queue(db, master_key, "download-notice", transfer, link_for=TANAKA,
              payload={"at": "2026-11-27T00:05:00Z", "first": True}),
        queue(db, master_key, "otp", transfer, link_for=TANAKA, secret={"code": "123456"}),
        queue(db, master_key, "give-up-note", transfer, payload={"failed_kind": "otp"}),
    ]
    for item in items:
        message = composer.compose(item)
        assert message.data.startswith(b"DKIM-Signature:"), item.kind
        assert dkim_valid(message.data, dkim_key), item.kind
        assert not re.search(rb"(?<!\r)\n|\r(?!\n)", message.data), item.kind
        assert message.data.isascii() and not message.smtputf8, item.kind


HOSTILE_SUBJECT = "見積書\r\nBcc: spy@evil.example\r\n\r\nInjected body"


@pytest.mark.parametrize("kind", ["password-recipient", "receipt", "otp"])
def test_a_hostile_stored_subject_cannot_add_headers_or_lines(
    db, master_key, composer, kind: str,
) -> None:
    transfer = Transfer(db, master_key, subject=HOSTILE_SUBJECT)
    db.write("UPDATE files SET display_name = ? WHERE transfer_id = ?",
             ("a.zip\r\nBcc: spy@evil.example", transfer.id))
    secret = {"manage_token": new_token()} if kind == "receipt" else (
        {"code": "123456"} if kind == "otp" else {"password": PASSWORD})
    item = queue(db, master_key, kind, transfer, link_for=None if kind == "receipt" else TANAKA,
                 secret=secret)
    message = composer.compose(item)
    mail = parsed(message)
    assert mail["Bcc"] is None and "Bcc" not in mail
    assert "\r" not in mail["Subject"] and "\n" not in mail["Subject"]
    assert "見積書 Bcc: spy@evil.example Injected body" in mail["Subject"]
    head = message.data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^bcc:", head, re.IGNORECASE | re.MULTILINE)
    assert not any(line.lower().startswith("bcc:") for line in body_of(message).splitlines())


def test_a_recipient_address_that_is_not_a_mailbox_is_a_compose_error(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key, recipients=("tanaka@partner.example.com\r\nBcc: x@y",))
    item = queue(db, master_key, "otp", transfer, link_for="tanaka@partner.example.com\r\nBcc: x@y",
                 secret={"code": "123456"})
    with pytest.raises(ComposeError):
        composer.compose(item)


def test_an_address_that_needs_smtputf8_is_sent_with_it(db, master_key, composer) -> None:
    recipient = "田中@partner.example.com"
    transfer = Transfer(db, master_key, recipients=(recipient,))
    item = queue(db, master_key, "otp", transfer, link_for=recipient, secret={"code": "123456"})
    message = composer.compose(item)
    assert message.smtputf8 and message.rcpt_tos == (recipient,)
    assert f"\r\nTo: {recipient}\r\n".encode() in message.data


def test_a_resend_is_the_same_message_byte_for_byte_before_signing(
    db, master_key, templates,
) -> None:
    unsigned = make_composer(db, templates, DkimSigner([]), master_key)
    _transfer, item = password_item(db, master_key)
    first, second = unsigned.compose(item), unsigned.compose(item)
    assert first == second


def test_a_signed_resend_keeps_message_id_and_differs_at_most_in_the_signature(
    db, master_key, composer,
) -> None:
    _transfer, item = password_item(db, master_key)
    first, second = composer.compose(item), composer.compose(item)
    assert parsed(first)["Message-ID"] == parsed(second)["Message-ID"]

    def without_signature(data: bytes) -> bytes:
        return re.sub(rb"^DKIM-Signature:.*?\r\n(?![ \t])", b"", data, flags=re.DOTALL)

    assert without_signature(first.data) == without_signature(second.data)
    assert without_signature(first.data) != first.data


# -- nothing to send any more -----------------------------------------------------------


@pytest.mark.parametrize("state", ["purged", "failed"])
def test_a_purged_or_failed_transfer_has_nothing_to_send(
    db, master_key, composer, state: str,
) -> None:
    _transfer, item = password_item(db, master_key)
    db.mark_purged(item.transfer_id, state=state)
    with pytest.raises(ComposeError):
        composer.compose(item)


@pytest.mark.parametrize("kind", ["password-recipient", "otp", "webhook-password"])
def test_a_revoked_link_gets_no_password_or_code(db, master_key, composer, kind: str) -> None:
    transfer = Transfer(db, master_key)
    secret = {"code": "123456"} if kind == "otp" else {"password": PASSWORD}
    item = queue(db, master_key, kind, transfer, link_for=TANAKA, secret=secret)
    ControlsStore(db).revoke_links(transfer.id, transfer.links[TANAKA], NOW, by="test")
    with pytest.raises(ComposeError):
        composer.compose(item)


def test_a_link_whose_mail_failed_gets_no_password(db, master_key, composer) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "password-recipient", transfer, link_for=GONE,
                 secret={"password": PASSWORD})
    with pytest.raises(ComposeError):
        composer.compose(item)


def test_a_seal_bound_to_another_item_does_not_open(db, master_key, composer) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "password-recipient", transfer, link_for=TANAKA,
                 secret={"password": PASSWORD}, seal_for=new_outbox_id())
    with pytest.raises(ComposeError):
        composer.compose(item)


def test_a_wiped_seal_is_a_compose_error(db, master_key, composer) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "receipt", transfer, secret=None)
    with pytest.raises(ComposeError):
        composer.compose(item)


@pytest.mark.parametrize("secret", [{"code": "12ab56"}, {"password": PASSWORD}, ["123456"]])
def test_a_seal_without_the_right_secret_is_a_compose_error(
    db, master_key, composer, secret,
) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, master_key, "otp", transfer, link_for=TANAKA, secret=secret)
    with pytest.raises(ComposeError):
        composer.compose(item)


def test_a_seal_under_another_master_key_is_a_compose_error(db, master_key, composer) -> None:
    transfer = Transfer(db, master_key)
    item = queue(db, secrets.token_bytes(32), "password-sender", transfer,
                 secret={"password": PASSWORD})
    with pytest.raises(ComposeError):
        composer.compose(item)


def test_an_unknown_kind_or_a_missing_transfer_is_a_compose_error(
    db, master_key, composer,
) -> None:
    transfer = Transfer(db, master_key)
    unknown = queue(db, master_key, "fax", transfer)
    with pytest.raises(ComposeError):
        composer.compose(unknown)
    item = queue(db, master_key, "receipt", transfer, secret={"manage_token": new_token()})
    with pytest.raises(ComposeError):
        composer.compose(replace(item, transfer_id=secrets.token_hex(16)))
    with pytest.raises(ComposeError):
        composer.compose(replace(item, transfer_id=None))


# -- ZIP password no longer needed -------------------------------------------------------


@pytest.mark.parametrize(("locale", "payload", "present", "absent"), [
    ("ja", {"scanned": True, "via": "password-mail"},
     ["ZIP のパスワードなし", "ウイルス検査済み", "ダウンロード用のパスワードが必要"],
     ["お送りすることはありません"]),
    ("en", {"scanned": False, "via": "sender-form"},
     ["without its password", "will not be sent to you", "still asks for the download password"],
     ["scanned"]),
])
def test_zip_password_notice_says_only_what_holds(
    db, master_key, composer, locale: str, payload: dict, present: list, absent: list,
) -> None:
    transfer = Transfer(db, master_key, locale=locale)  # its links keep a download password
    item = queue(db, master_key, "password-replaced", transfer, link_for=TANAKA, payload=payload)
    message = composer.compose(item)
    assert message.rcpt_tos == (TANAKA,)
    body = body_of(message)
    assert all(text in body for text in present), body
    assert not any(text in body for text in absent), body
    assert PASSWORD not in body and "http" not in body


@pytest.mark.parametrize("subject", [
    "=?x-unknown?B?6KaL56mN5pu4LnppcA==?=",  # as a mail once stored it: an unknown charset
    "=??B?6KaL56mN5pu4LnppcA==?= 見積書",  # an empty charset, beside non-ASCII text
])
def test_a_subject_in_an_unknown_charset_composes(db, master_key, composer, subject) -> None:
    """Stored subjects go into our headers as literal text: nothing the header parser would
    decode again into characters that cannot be written out (once a receipt failed on every
    retry, then its give-up note)."""
    transfer = Transfer(db, master_key, subject=subject)
    item = queue(db, master_key, "receipt", transfer, secret={"manage_token": new_token()})
    message = composer.compose(item)
    assert "見積書" in str(parsed(message)["Subject"]) or "=" in str(parsed(message)["Subject"])
