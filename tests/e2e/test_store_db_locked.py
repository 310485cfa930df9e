"""The metadata store while another process holds the database locked, as an admin's sqlite3
shell or a backup would (a real second process; the store on its own: tests/unit/test_store_db.py)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.store.db import Database, MetadataError
from tests.support.sqlite_lock import locked_by_another_process

T0 = datetime(2024, 4, 1, 9, 0, tzinfo=timezone.utc)


def add_transfer(db: Database, transfer_id: str) -> None:
    db.insert_transfer(
        id=transfer_id, fingerprint="fp-" + transfer_id, message_id="<m@example.jp>",
        sender="taro@example.jp", department="sales", subject="見積書",
        created_at=T0, expires_at=T0 + timedelta(days=7), password_channel="recipient-email",
        locale="ja",
    )


def test_database_locked_by_another_process_fails_within_busy_timeout_then_recovers(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "meta.db", busy_timeout_ms=300)
    add_transfer(db, "before")
    with locked_by_another_process(tmp_path / "meta.db"):
        started = time.monotonic()
        with pytest.raises(MetadataError, match="locked"):
            add_transfer(db, "during")
        assert 0.25 <= time.monotonic() - started < 3
        assert db.transfer("before") is not None  # WAL readers are not blocked
    add_transfer(db, "after")
    assert db.transfer("during") is None and db.transfer("after") is not None
    db.close()
