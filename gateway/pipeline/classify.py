"""Find every file a message carries and say, from its bytes, whether it holds an encrypted
archive (or another encrypted container: 7z, RAR, Office, PDF, OpenPGP) anywhere in it.

Names, Content-Types and transfer-encoding labels are reported but never trusted for the
verdict: every leaf of the MIME tree — body text, reports and unparsed wrappers included —
is decoded as leniently as clients do and looked into by gateway.containers.contents, which
opens whatever can hide a file. A leaf that holds an encrypted archive is an attachment to
convert whatever its type; a message the inspection cannot cover raises the limit's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from email.message import Message

from gateway.config import Config
from gateway.containers import inspect_container, nested_zip_names
from gateway.containers.base import InspectionLimit
from gateway.containers.contents import ContentInspector, InspectionLimits
from gateway.containers.zipinspect import inspect_zip
from gateway.errors import StructureLimitExceeded, UnparseableMessage
from gateway.filenames import attachment_filename, has_filename_parameter
from gateway.mime import parse_message
from gateway.model import Attachment, Classification, ContentReport, Finding, ZipVerdict
from gateway.pipeline.leaves import HEADER_WORTH_A_LOOK, Leaf, LeafKind, walk_leaves
from gateway.pipeline.parse import MimeLimits, check_limits
from gateway.pipeline.policy import needs_inspection
from gateway.pipeline.prescan import plain_text
from gateway.pipeline.transaction import Transaction

BODY_TEXT_TYPES = frozenset({"text/plain", "text/html"})
_MAX_NOTES = 20
_SEALED = ContentReport(Finding.ENCRYPTED, "S/MIME or PGP message encrypted with a password")
_FRAGMENT = "a message/partial fragment (its other pieces travel in other mails)"
_UNINSPECTED_CMS_LIMIT = 64 * 1024 * 1024
# Messages up to this size are classified in the event loop: a plain one costs less there
# (a few hundred microseconds at most) than the hop to a worker thread and back
_AT_ONCE_MAX = 16 * 1024
_NOTHING_FOUND = Classification(attachments=())


class Classify:
    """The classify stage: parse within the limits, and look into every leaf where a copy
    leaves the organisation under a policy that converts (elsewhere only the attachments'
    own bytes are judged: mail that stays inside passes as it is)."""

    name = "classify"

    def __init__(self, config: Config):
        self._config = config
        self._limits = MimeLimits.from_settings(config.smtp)
        self._inspection = InspectionLimits(
            max_expanded=config.smtp.max_expanded_size,
            max_nesting=config.smtp.max_file_nesting,
            timeout=config.smtp.inspect_timeout.total_seconds(),
        )

    async def process(self, tx: Transaction) -> None:
        tx.limits = self._limits
        if needs_inspection(self._config, tx.envelope):
            tx.inspector = content_inspector(self._limits, self._inspection)
        # a small message is looked at here: less work than the hop to a worker thread costs
        if len(tx.raw) <= _AT_ONCE_MAX:
            opaque, found = classify_raw(tx.raw, self._limits, tx.inspector)
        else:
            opaque, found = await asyncio.to_thread(
                classify_raw, tx.raw, self._limits, tx.inspector)
        if found is not None:  # one plain text part with nothing in it: no parse unless asked
            raw = tx.raw
            tx.parse_later = lambda: parse_message(raw, opaque)
            tx.classification = found
            return
        tx.message, tx.classification = await asyncio.to_thread(
            _parse_and_classify, tx.raw, opaque, self._limits, tx.inspector)


Spans = tuple[tuple[int, int], ...]


def classify_raw(raw: bytes, limits: MimeLimits, inspector: ContentInspector | None = None
                 ) -> tuple[Spans, Classification | None]:
    """Check the structure limits on the raw bytes (over one, the typed error propagates, as
    from parse_and_classify) and keep their answer for the parse. For one plain text part
    (gateway.pipeline.prescan) whose header section and body the inspector finds clean, also
    the classification the full way gives it, found without parsing; else None."""
    opaque = check_limits(raw, limits)
    plain = plain_text(raw)
    if plain is None:
        return opaque, None
    if inspector is not None:
        # what the leaf walk hands the inspector, in its order: the header section, the body
        if len(plain.header) >= HEADER_WORTH_A_LOOK and not inspector.inspect(plain.header).clean:
            return opaque, None
        if not inspector.inspect(plain.body).clean:
            return opaque, None
    return opaque, _NOTHING_FOUND


def _parse_and_classify(raw: bytes, opaque: Spans, limits: MimeLimits,
                        inspector: ContentInspector | None) -> tuple[Message, Classification]:
    message = parse_message(raw, opaque)
    return message, classify(message, limits, inspector)


def content_inspector(limits: MimeLimits, inspection: InspectionLimits) -> ContentInspector:
    """A fresh inspector (one budget) for one message; attached mail is walked as the
    message itself is."""
    return ContentInspector(inspection, _MessageOpener(limits).pieces)


def parse_and_classify(
    raw: bytes, limits: MimeLimits, inspector: ContentInspector | None = None
) -> tuple[Message, Classification]:
    """Check the structure limits on the raw bytes, parse, and classify. Over a limit the
    typed error propagates (its reply is in gateway.replies). With an inspector, every
    leaf's content is looked into; without, only the attachments' own bytes are judged (for
    mail that no recipient outside receives)."""
    message = parse_message(raw, check_limits(raw, limits))
    return message, classify(message, limits, inspector)


def classify(
    root: Message, limits: MimeLimits = MimeLimits(), inspector: ContentInspector | None = None
) -> Classification:
    """List the attachments of a parsed message with their verdicts; with an inspector,
    every leaf's content is looked into as well."""
    attachments: list[Attachment] = []
    notes: list[str] = []
    signed = False
    opaque: list[str] = []
    uninspectable: list[str] = []
    for leaf in _leaves(root, limits, inspector):
        signed = signed or leaf.inside_signed
        if leaf.kind is LeafKind.OPAQUE:
            opaque.append(f"{_where(leaf.path)}: encrypted to the recipient's key")
            continue
        if leaf.kind is LeafKind.FRAGMENT:
            uninspectable.append(f"{_where(leaf.path)}: {_FRAGMENT}")
            continue
        report = _inspected(inspector, leaf)
        if leaf.kind is LeafKind.OUTSIDE:
            if report is not None and not report.clean:
                uninspectable.append(f"{_where(leaf.path)}: {report.reason} in its {leaf.where}")
            continue
        if report is not None and report.finding is Finding.OPAQUE:
            opaque.append(f"{_where(leaf.path)}: {report.reason}")
        if leaf.kind is LeafKind.SEALED or _carries_file(leaf.part, report):
            attachment = _attachment(leaf, report)
            attachments.append(attachment)
            if attachment.zip.nested_zip_names:
                notes.append(f"double-zip: {attachment.filename or _where(leaf.path)}")
        notes.extend(_defect_notes(leaf.path, leaf.part))
    return Classification(
        attachments=tuple(attachments),
        signed=signed,
        opaque=tuple(opaque),
        uninspectable=tuple(uninspectable),
        notes=_bounded(notes),
    )


def _leaves(root: Message, limits: MimeLimits, inspector: ContentInspector | None):
    # without an inspector nothing is charged: CMS compression is still bounded, by the
    # largest message we accept
    remaining = inspector.remaining if inspector is not None else _UNINSPECTED_CMS_LIMIT
    return walk_leaves(root, max_depth=limits.max_depth, max_parts=limits.max_parts,
                       max_output=remaining)


def _inspected(inspector: ContentInspector | None, leaf: Leaf) -> ContentReport | None:
    if leaf.kind is LeafKind.SEALED:
        return _SEALED
    if inspector is None:
        return None
    report = inspector.inspect(leaf.data)
    if leaf.also_raw and report.finding is not Finding.ENCRYPTED:
        raw = inspector.inspect(leaf.also_raw)
        report = raw if raw.finding > report.finding else report
    return report


def _carries_file(part: Message, report: ContentReport | None) -> bool:
    """A file: named, marked as an attachment, not body text — or anything holding one."""
    if report is not None and report.finding in (Finding.ENCRYPTED, Finding.UNINSPECTABLE):
        return True
    if part.get_content_maintype() in ("multipart", "message"):
        return False
    if part.get_content_disposition() == "attachment" or has_filename_parameter(part):
        return True
    return part.get_content_type() not in BODY_TEXT_TYPES


def _attachment(leaf: Leaf, report: ContentReport | None) -> Attachment:
    data = leaf.data
    zip_report = inspect_zip(data)
    container = None
    if zip_report.verdict is ZipVerdict.NOT_ZIP:
        container = inspect_container(data)
    else:
        zip_report = replace(zip_report, nested_zip_names=nested_zip_names(data, zip_report))
    part = leaf.part
    is_body = not part.is_multipart() and part.get_content_type() in BODY_TEXT_TYPES and not (
        part.get_content_disposition() == "attachment" or has_filename_parameter(part))
    return Attachment(
        path=leaf.path,
        filename=attachment_filename(part),
        content_type=part.get_content_type(),
        data=data,
        zip=zip_report,
        inside_rfc822=leaf.inside_rfc822,
        container=container,
        content=report,
        inside_signed=leaf.inside_signed,
        in_body=is_body,
    )


class _MessageOpener:
    """How the content inspector looks into a message found inside a file: the same limits,
    the same walk; what cannot be walked is a finding, not a reason to refuse the outer mail."""

    def __init__(self, limits: MimeLimits):
        self._limits = limits

    def pieces(self, data: bytes, remaining: int) -> Iterator[bytes | ContentReport]:
        try:
            message = parse_message(data, check_limits(data, self._limits))
            leaves = list(walk_leaves(message, max_depth=self._limits.max_depth,
                                      max_parts=self._limits.max_parts, max_output=remaining))
        except (StructureLimitExceeded, UnparseableMessage) as problem:
            yield ContentReport(Finding.UNINSPECTABLE, f"attached message: {problem}")
            return
        except InspectionLimit:
            raise
        for leaf in leaves:
            if leaf.kind in (LeafKind.CONTENT, LeafKind.OUTSIDE):
                yield leaf.data
                if leaf.also_raw:
                    yield leaf.also_raw
            elif leaf.kind is LeafKind.OPAQUE:
                yield ContentReport(Finding.OPAQUE, "attached message encrypted to a key")
            elif leaf.kind is LeafKind.SEALED:
                yield _SEALED
            elif leaf.kind is LeafKind.FRAGMENT:
                yield ContentReport(Finding.UNINSPECTABLE, f"attached {_FRAGMENT}")


def _defect_notes(path: tuple[int, ...], part: Message) -> list[str]:
    return [f"{_where(path)}: {type(defect).__name__}" for defect in part.defects]


def _where(path: tuple[int, ...]) -> str:
    return "part " + ".".join(str(index) for index in path) if path else "message"


def _bounded(notes: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(notes))
    if len(unique) <= _MAX_NOTES:
        return tuple(unique)
    return tuple(unique[:_MAX_NOTES]) + (f"and {len(unique) - _MAX_NOTES} more notes",)
