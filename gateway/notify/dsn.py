"""Shape a delivery status notification (RFC 3464) from what the outbox item says.

multipart/report; report-type=delivery-status (RFC 6522) with three parts: the human-readable
text (rendered by the composer in the policy's language), the machine-readable
message/delivery-status (per message Reporting-MTA and Arrival-Date; per refused recipient
Final-Recipient, Action: failed, Status and Diagnostic-Code), and the original's header section
as text/rfc822-headers, never its body. The boundary comes from the item, so a resend is the
same bytes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, Message, MIMEPart
from email.utils import format_datetime


_MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


@dataclass(frozen=True)
class ReportedRecipient:
    address: str  # one line, as the composer made it safe
    status: str  # RFC 3463, 5.x.x
    diagnostic: str  # the next hop's reply, one line of printable ASCII


def make_report(
    message: EmailMessage, *, text: str, reporting_mta: str, arrival: datetime,
    recipients: list[ReportedRecipient], headers: bytes, boundary: str,
) -> None:
    """Give `message` (its own header fields already set) the report as its body."""
    message["MIME-Version"] = "1.0"
    message["Content-Type"] = "multipart/report; report-type=delivery-status"
    message.set_boundary(boundary)
    message.set_payload([
        _human_part(text), _status_part(reporting_mta, arrival, recipients),
        _headers_part(headers),
    ])


def _human_part(text: str) -> MIMEPart:
    part = MIMEPart()
    plain = text.isascii() and _longest_line(text.encode()) <= _MAX_LINE
    part.set_content(text, charset="utf-8", cte="7bit" if plain else "base64")
    return part


def _status_part(reporting_mta: str, arrival: datetime,
                 recipients: list[ReportedRecipient]) -> Message:
    """message/delivery-status: the stdlib writes each block (a list of field sets) in turn."""
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks = [per_message]
    for recipient in recipients:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {recipient.address}"
        block["Action"] = "failed"
        block["Status"] = recipient.status
        block["Diagnostic-Code"] = f"smtp; {recipient.diagnostic}"
        blocks.append(block)
    part = Message()
    part["Content-Type"] = "message/delivery-status"
    part.set_payload(blocks)
    return part


def _headers_part(headers: bytes) -> Message:
    """text/rfc822-headers; 8-bit header bytes (SMTPUTF8, or raw) or lines longer than SMTP
    carries travel base64."""
    part = Message()
    part["Content-Type"] = "text/rfc822-headers"
    if headers.isascii() and _longest_line(headers) <= _MAX_LINE:
        part.set_payload(headers.decode("ascii"))
    else:
        part["Content-Transfer-Encoding"] = "base64"
        part.set_payload(base64.encodebytes(headers).decode("ascii"))
    return part


def _longest_line(data: bytes) -> int:
    return max(map(len, data.splitlines()), default=0)
