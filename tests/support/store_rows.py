"""Read a running gateway's database file as an admin would: with a read-only connection of our
own, not through the gateway's objects."""

from __future__ import annotations

import sqlite3


def link_states(running) -> dict[str, list[str]]:
    """Each recipient's link states, oldest link first."""
    path = running.gateway.config.storage.database
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT recipient, state FROM links ORDER BY created_at").fetchall()
    states: dict[str, list[str]] = {}
    for recipient, state in rows:
        states.setdefault(recipient, []).append(state)
    return states


def transfer_rows(running) -> list[sqlite3.Row]:
    path = running.gateway.config.storage.database
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM transfers").fetchall()
