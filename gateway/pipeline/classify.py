"""Find every file a message carries and say, from its bytes, whether it is an encrypted ZIP
(or another encrypted container: 7z, Office, PDF) and whether a ZIP holds ZIPs.

Names and Content-Types are reported but never trusted for the verdict: every attachment's
bytes go through inspect_zip, and those that are no ZIP through inspect_container, so an
encrypted ZIP called report.pdf or an encrypted .docx sent as octet-stream is still found.
"""

from __future__ import annotations

from dataclasses import replace
from email.errors import InvalidBase64LengthDefect
from email.message import Message

from gateway.containers import inspect_container, nested_zip_names
from gateway.filenames import (
    attachment_filename,
    decode_base64_leniently,
    has_filename_parameter,
)
from gateway.model import Attachment, Classification, ZipVerdict
from gateway.pipeline.parse import (
    MAX_DEPTH,
    MimeLimitExceeded,
    MimeLimits,
    check_limits,
    children,
    parse_message,
    walk_with_paths,
)
from gateway.zipinspect import inspect_zip

# PGP/MIME (RFC 3156) and S/MIME (RFC 8551): changing such a message would break it
SIGNED_OR_ENCRYPTED_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
BODY_TEXT_TYPES = frozenset({"text/plain", "text/html"})
_MAX_NOTES = 20


def parse_and_classify(raw: bytes, limits: MimeLimits) -> tuple[Message, Classification]:
    """Check the limits on the raw bytes, then parse and classify. Over a header limit, or over
    a MIME limit with action "reject", the typed error propagates (its reply is in
    gateway.replies); over a MIME limit with "pass", the message is left unparsed and is
    reported as having nothing to convert, so it leaves byte for byte as it came."""
    try:
        check_limits(raw, limits)
    except MimeLimitExceeded as error:
        if limits.action != "pass":
            raise
        note = f"mime limit: {error.reason}; passed unchanged"
        return Message(), Classification(attachments=(), unparseable=True, notes=(note,))
    message = parse_message(raw)
    return message, classify(message)


def classify(root: Message) -> Classification:
    """List the attachments of a parsed message with their ZIP verdicts."""
    attachments: list[Attachment] = []
    notes: list[str] = []
    signed_or_encrypted = False
    # path of each container → whether what it holds is inside an attached message; kept
    # here because asking is_inside_rfc822 per part would be quadratic in very wide trees
    holds_rfc822_content: dict[tuple[int, ...], bool] = {}
    for path, part in walk_with_paths(root):
        content_type = part.get_content_type()
        signed_or_encrypted = signed_or_encrypted or content_type in SIGNED_OR_ENCRYPTED_TYPES
        inside_rfc822 = bool(path) and holds_rfc822_content[path[:-1]]
        if part.is_multipart():
            holds_rfc822_content[path] = inside_rfc822 or content_type == "message/rfc822"
        notes.extend(_structure_notes(path, part))
        if _is_attachment(part):
            attachment = _attachment(path, part, inside_rfc822)
            attachments.append(attachment)
            if attachment.zip.nested_zip_names:
                notes.append(f"double-zip: {attachment.filename or _where(path)}")
        notes.extend(_defect_notes(path, part))  # after decoding, which records bad base64
    return Classification(
        attachments=tuple(attachments),
        signed_or_encrypted=signed_or_encrypted,
        notes=_bounded(notes),
    )


def _is_attachment(part: Message) -> bool:
    """A leaf part that is not body text (text/plain or text/html, unnamed, not 'attachment')."""
    if part.is_multipart() or part.get_content_maintype() in ("multipart", "message"):
        return False
    if part.get_content_disposition() == "attachment" or has_filename_parameter(part):
        return True
    return part.get_content_type() not in BODY_TEXT_TYPES


def _attachment(path: tuple[int, ...], part: Message, inside_rfc822: bool) -> Attachment:
    data = _transfer_decoded(part)
    report = inspect_zip(data)
    container = None
    if report.verdict is ZipVerdict.NOT_ZIP:
        container = inspect_container(data)
    else:
        report = replace(report, nested_zip_names=nested_zip_names(data, report))
    return Attachment(
        path=path,
        filename=attachment_filename(part),
        content_type=part.get_content_type(),
        data=data,
        zip=report,
        inside_rfc822=inside_rfc822,
        container=container,
    )


def _transfer_decoded(part: Message) -> bytes:
    defects_before = len(part.defects)
    payload = part.get_payload(decode=True)
    if any(isinstance(d, InvalidBase64LengthDefect) for d in part.defects[defects_before:]):
        # here the stdlib hands back the base64 text itself; mail clients decode what is
        # whole, so a cut-off encrypted ZIP must be judged on those bytes
        raw = part.get_payload()
        if isinstance(raw, str):
            return decode_base64_leniently(raw.encode("ascii", "surrogateescape"))
    return payload if isinstance(payload, bytes) else b""


def _structure_notes(path: tuple[int, ...], part: Message) -> list[str]:
    where = _where(path)
    notes: list[str] = []
    if len(path) >= MAX_DEPTH and children(part):
        notes.append(f"{where}: depth limit {MAX_DEPTH} reached, deeper parts not inspected")
    if part.get_content_maintype() in ("multipart", "message") and not part.is_multipart():
        notes.append(f"{where}: {part.get_content_type()} without parseable parts")
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if part.get_content_type() == "message/rfc822" and encoding in ("base64", "quoted-printable"):
        # the parser reads the encoded text as the message, so files inside stay unseen
        notes.append(f"{where}: message/rfc822 in {encoding}, its contents not inspected")
    return notes


def _defect_notes(path: tuple[int, ...], part: Message) -> list[str]:
    return [f"{_where(path)}: {type(defect).__name__}" for defect in part.defects]


def _where(path: tuple[int, ...]) -> str:
    return "part " + ".".join(str(index) for index in path) if path else "message"


def _bounded(notes: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(notes))
    if len(unique) <= _MAX_NOTES:
        return tuple(unique)
    return tuple(unique[:_MAX_NOTES]) + (f"and {len(unique) - _MAX_NOTES} more notes",)
