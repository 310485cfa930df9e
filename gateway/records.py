"""What an administrator does with the records from the command line: revoke a transfer or a
link, list transfers, export the audit trail (JSON lines or CSV)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, TextIO
from zoneinfo import ZoneInfo

from gateway.store.controls import ControlsStore
from gateway.store.db import Database, EventRow
from gateway.store.outbox import OutboxStore

# `transfers` shows a transfer id's first SHORT_ID characters; `revoke` takes any unique prefix
# of at least SHORT_ID_MIN (fewer could name a transfer the admin never saw listed).
SHORT_ID = 12
SHORT_ID_MIN = 8


class RecordNotFound(LookupError):
    pass


def parse_since(text: str, zone: ZoneInfo) -> datetime:
    """`2026-11-01` or `2026-11-01T09:00` (in the configured zone) or with an offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


@dataclass(frozen=True)
class Revoked:
    transfer_id: str
    links: int
    cancelled_notices: int


def revoke(db: Database, transfer_or_link: str, now: datetime) -> Revoked:
    """Revoke every link of a transfer, or one link; pending notices for them are cancelled."""
    controls, outbox = ControlsStore(db), OutboxStore(db)
    transfer_or_link = _whole_transfer_id(db, transfer_or_link)
    if db.transfer(transfer_or_link) is not None:
        links = controls.revoke_links(transfer_or_link, None, now, by="admin")
        cancelled = outbox.cancel(transfer_id=transfer_or_link)
        return Revoked(transfer_or_link, links, cancelled)
    link = db.link(transfer_or_link)
    if link is None:
        raise RecordNotFound(f"no transfer or link with id {transfer_or_link!r}")
    links = controls.revoke_links(link.transfer_id, link.id, now, by="admin")
    return Revoked(link.transfer_id, links, outbox.cancel(link_id=link.id))


def _whole_transfer_id(db: Database, given: str) -> str:
    """The transfer id `given` begins, when it is the short form `transfers` prints (at least
    SHORT_ID_MIN characters, one transfer only); else `given` as it is (a whole id, a link id)."""
    if len(given) < SHORT_ID_MIN or db.transfer(given) is not None:
        return given
    matches = db.transfer_ids_starting(given, 2)
    if len(matches) > 1:
        raise RecordNotFound(f"{given!r} begins more than one transfer id: give more of it")
    return matches[0] if matches else given


def transfers_table(db: Database, since: datetime, sender: str | None, zone: ZoneInfo) -> str:
    header = ("created", "transfer", "sender", "dept", "state", "files", "links", "downloads",
              "expires")
    rows = [header]
    for transfer in db.transfers_since(since, sender):
        links = db.links_of(transfer.id)
        rows.append((
            transfer.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
            transfer.id[:SHORT_ID], transfer.sender, transfer.department, transfer.state,
            str(len(db.files_of(transfer.id))),
            f"{sum(1 for link in links if link.state == 'active')}/{len(links)}",
            str(sum(link.download_count for link in links)),
            transfer.expires_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
        ))
    widths = [max(len(_printable(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(_printable(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    )


def _printable(text: str) -> str:
    # Stored values came from mail: never let a control character reach the terminal.
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _event_record(event: EventRow) -> dict:
    return {
        "id": event.id, "at": event.at.astimezone(timezone.utc).isoformat(), "kind": event.kind,
        "transfer_id": event.transfer_id, "link_id": event.link_id,
        "recipient": event.recipient, "detail": event.detail,
    }


def export_events(events: Iterable[EventRow], fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "jsonl":
        for event in events:
            out.write(json.dumps(_event_record(event), ensure_ascii=False) + "\n")
            count += 1
        return count
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "at", "kind", "transfer_id", "link_id", "recipient", "detail"])
    for event in events:
        record = _event_record(event)
        record["detail"] = json.dumps(record["detail"], ensure_ascii=False)
        writer.writerow([_csv_safe(record[k]) for k in
                         ("id", "at", "kind", "transfer_id", "link_id", "recipient", "detail")])
        count += 1
    return count


def _csv_safe(value: object) -> str:
    """Neutralise spreadsheet formulas: addresses and names come from outside."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
