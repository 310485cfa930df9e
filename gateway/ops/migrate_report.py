"""What a migrate-store run found and did, and the table it prints: per table the rows and SHA-256
on both sides and what the run wrote, the sequences, per blob the SHA-256 of its sealed bytes on
both sides (gateway/ops/migrate_store.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from gateway.ops.row_compare import Change, TableDigest

SHOWN_HEX = 16  # of a SHA-256 in the table (the comparison uses all of it)


@dataclass
class TableCheck:
    name: str
    source: TableDigest = field(default_factory=TableDigest)
    target: TableDigest = field(default_factory=TableDigest)
    new: int = 0  # rows the target lacked (copied, in a copy)
    changed: int = 0  # rows that differed (updated, in a copy)
    gone: int = 0  # rows only the target has: gone from the source since an earlier copy
    pruned: int = 0  # of those, deleted (--prune)
    named: list[str] = field(default_factory=list)  # rows that differ, by key (verify only)

    def count(self, change: Change) -> None:
        if change.kind == "missing":
            self.new += 1
        elif change.kind == "differs":
            self.changed += 1
        else:
            self.gone += 1

    @property
    def matches(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True)
class BlobCheck:
    blob_id: str
    source_sha256: str | None  # None: not on the source (purged since the snapshot)
    target_sha256: str | None  # None: not on the target
    copied: bool = False
    replaced: bool = False  # the target held other bytes under that id

    @property
    def matches(self) -> bool:
        return self.source_sha256 is not None and self.source_sha256 == self.target_sha256

    @property
    def problem(self) -> str:
        if self.source_sha256 is None:
            return "gone from the source since the snapshot (purged there): run again"
        if self.target_sha256 is None:
            return "missing on the target"
        return f"differs: source sha-256 {self.source_sha256}, target {self.target_sha256}"


@dataclass
class Outcome:
    tables: list[TableCheck]
    sequences_behind: list[str]  # table.column whose next id is one its rows have
    blobs: list[BlobCheck]
    blobs_pruned: int = 0

    @property
    def matches(self) -> bool:
        return (all(check.matches for check in self.tables) and not self.sequences_behind
                and all(blob.matches for blob in self.blobs))


def format_outcome(outcome: Outcome, *, verify_only: bool) -> str:
    header = ("table", "rows source", "rows target", "sha-256 source", "sha-256 target",
              "new", "changed", "gone", "")
    rows = [header]
    for check in sorted(outcome.tables, key=lambda check: check.name):
        rows.append((check.name, str(check.source.rows), str(check.target.rows),
                     check.source.sha256[:SHOWN_HEX], check.target.sha256[:SHOWN_HEX],
                     str(check.new), str(check.changed), str(check.gone),
                     "ok" if check.matches else "MISMATCH"))
    rows.append(_blob_row(outcome.blobs, verify_only))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, _legend(verify_only))
    lines += _problems(outcome, verify_only)
    if not verify_only:
        lines.append("The source was read as one snapshot: what its gateway stored since is"
                     " copied by the next run. Cut over with the gateway stopped and a last run.")
    problems = sum(not check.matches for check in outcome.tables) + len(
        outcome.sequences_behind) + sum(not blob.matches for blob in outcome.blobs)
    lines.append(
        f"verified: {len(outcome.tables)} tables and {len(outcome.blobs)} blobs match"
        if outcome.matches else f"NOT verified: {problems} mismatch(es)")
    return "\n".join(lines) + "\n"


def _legend(verify_only: bool) -> str:
    if verify_only:
        return ("(new: rows the target lacks; changed: rows that differ; gone: rows only the"
                " target has)")
    return ("(new: rows copied; changed: rows updated; gone: rows only the target has, gone"
            " from the source since an earlier run)")


def _blob_row(blobs: list[BlobCheck], verify_only: bool) -> tuple[str, ...]:
    """One line for the blobs: each side's hash is over 'blob id, sha-256' lines in id order."""
    def side_hash(attribute: str) -> str:
        digest = hashlib.sha256()
        for blob in sorted(blobs, key=lambda blob: blob.blob_id):
            if getattr(blob, attribute) is not None:
                digest.update(f"{blob.blob_id} {getattr(blob, attribute)}\n".encode())
        return digest.hexdigest()[:SHOWN_HEX]

    if verify_only:
        new = sum(blob.source_sha256 is not None and blob.target_sha256 is None for blob in blobs)
        changed = sum(None not in (blob.source_sha256, blob.target_sha256)
                      and not blob.matches for blob in blobs)
    else:
        new = sum(blob.copied and not blob.replaced for blob in blobs)
        changed = sum(blob.replaced for blob in blobs)
    return ("blobs (sealed bytes)",
            str(sum(blob.source_sha256 is not None for blob in blobs)),
            str(sum(blob.target_sha256 is not None for blob in blobs)),
            side_hash("source_sha256"), side_hash("target_sha256"), str(new), str(changed),
            "-", "ok" if all(blob.matches for blob in blobs) else "MISMATCH")


def _problems(outcome: Outcome, verify_only: bool) -> list[str]:
    lines = []
    for check in outcome.tables:
        if check.matches:
            continue
        if check.named:
            lines += [f"  {check.name}: {named}" for named in check.named]
        elif not verify_only:
            lines.append(f"  {check.name}: the target does not match the snapshot;"
                         " `migrate-store --verify-only` names the rows")
    gone = sum(check.gone - check.pruned for check in outcome.tables)
    if gone:
        lines.append(f"  {gone} row(s) gone from the source since an earlier copy (purged"
                     " there) are kept on the target: --prune removes them")
    pruned = sum(check.pruned for check in outcome.tables)
    if pruned or outcome.blobs_pruned:
        lines.append(f"  pruned: {pruned} row(s), {outcome.blobs_pruned} blob(s)")
    lines += [f"  sequence {name} is behind its rows: new rows would take ids in use"
              for name in outcome.sequences_behind]
    lines += [f"  blob {blob.blob_id}: {blob.problem}"
              for blob in outcome.blobs if not blob.matches]
    return lines
