"""Logging set-up and the one structured line written per message.

Values are quoted so that CR/LF or `=` in an address can never forge a second line or key, and
every log line is escaped so that names and subjects chosen by a sender (control characters,
terminal escapes, bidi overrides) reach the log as visible escapes, never as themselves.
"""

from __future__ import annotations

import json
import logging
import re
import sys

from gateway.model import Envelope

# C0 and C1 controls, DEL, bidi controls (U+061C, U+200E/F, U+202A-E, U+2066-9), line and
# paragraph separators, BOM, and lone surrogates (which cannot even be written as UTF-8)
_UNSAFE_IN_A_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff"
    "\ud800-\udfff]"
)


def escape_line(text: str) -> str:
    """text with every character that could break, forge or disguise a log line as \\uXXXX."""
    return _UNSAFE_IN_A_LINE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _kv_value(value: object) -> str:
    text = str(value)
    if text and all(ch.isalnum() or ch in "-._@:/+" for ch in text):
        return text
    return json.dumps(text, ensure_ascii=True)


def format_fields(fields: dict, fmt: str) -> str:
    if fmt == "json":
        # readable Japanese, but JSON's own escapes for anything unsafe in a line
        return escape_line(json.dumps(fields, ensure_ascii=False, default=str))
    return " ".join(f"{key}={_kv_value(value)}" for key, value in fields.items())


class EscapingFormatter(logging.Formatter):
    """One record, one line: the message part is escaped whatever a logged value contained.
    A traceback, when there is one, follows on its own lines as Python formats it."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging names it so
        return escape_line(super().formatMessage(record))


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command at INFO; our one line per message says what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


class MessageLogger:
    """Writes the one line per message: queue id, sender, department, counts, decision, reply, ms."""

    def __init__(self, fmt: str = "kv", logger: logging.Logger | None = None):
        self._fmt = fmt
        self._log = logger or logging.getLogger("gateway.message")

    def message(self, txid: str, envelope: Envelope, outcome, reply: str, seconds: float) -> dict:
        fields = {
            "queue_id": txid,
            "client": envelope.peer,
            "from": envelope.mail_from or "<>",  # the null sender, written as Postfix logs it
            "department": outcome.department,
            "rcpt": len(envelope.rcpt_tos),
            "internal": outcome.internal,
            "external": outcome.external,
            "decision": outcome.decision,
            "files": outcome.converted_files,
            "transfer": outcome.transfer_id,
            "reply": reply.split(" ", 1)[0],
            "ms": round(seconds * 1000),
        }
        if outcome.notes:
            fields["notes"] = ",".join(outcome.notes)[:300]
        self._log.info("%s", format_fields(fields, self._fmt))
        return fields
