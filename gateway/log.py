"""Logging set-up and the one structured line written per message.

Values are quoted so that CR/LF or `=` in an address can never forge a second line or key.
"""

from __future__ import annotations

import json
import logging
import sys

from gateway.model import Envelope


def _kv_value(value: object) -> str:
    text = str(value)
    if text and all(ch.isalnum() or ch in "-._@:/+" for ch in text):
        return text
    return json.dumps(text, ensure_ascii=True)


def format_fields(fields: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(fields, ensure_ascii=False, default=str)
    return " ".join(f"{key}={_kv_value(value)}" for key, value in fields.items())


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
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
            "from": envelope.mail_from,
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
