"""The admin commands against the database of a gateway that really relayed mail."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from tests.support.running import corpus_mail, send_corpus

ROOT = Path(__file__).resolve().parents[2]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def config_for(running, tmp_path: Path) -> Path:
    storage = running.gateway.config.storage
    path = tmp_path / "admin.toml"
    path.write_text(
        f'[gateway]\ninternal_domains = ["city.example.lg.jp"]\n'
        f'[storage]\ndata_dir = "{storage.data_dir}"\ndatabase = "{storage.database}"\n'
        f'master_key_file = "{storage.master_key_file}"\n'
    )
    return path


def test_transfers_table_revoke_and_audit_export(tmp_path, sink, start_gateway):
    running = start_gateway()
    assert send_corpus(running.port, corpus_mail("01_outlook_jis_aes256"))[0] == 250
    config = config_for(running, tmp_path)

    table = cli(config, "transfers", "--sender", "somu@city.example.lg.jp")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["created", "transfer", "sender"] and len(lines) == 2
    assert "somu@city.example.lg.jp" in lines[1] and "2/2" in lines[1]
    assert len(cli(config, "transfers", "--sender", "nobody@x.example").stdout.splitlines()) == 1

    (transfer,) = running.db.transfers_since(datetime(2000, 1, 1, tzinfo=timezone.utc))
    link, other = running.db.links_of(transfer.id)
    revoked = cli(config, "revoke", link.id)
    assert revoked.returncode == 0 and "revoked 1 link(s)" in revoked.stdout
    assert running.db.link(link.id).state == "revoked" and running.db.link(other.id).state == "active"
    assert cli(config, "revoke", "no-such-id").returncode == 1
    # The id as `transfers` shows it revokes the whole transfer; too short a prefix does not.
    short = lines[1].split()[2]  # after the date and the time
    assert transfer.id.startswith(short) and len(short) < len(transfer.id)
    assert cli(config, "revoke", short[:7]).returncode == 1
    assert running.db.link(other.id).state == "active"
    revoked = cli(config, "revoke", short)
    assert revoked.returncode == 0 and f"of transfer {transfer.id}" in revoked.stdout, revoked
    assert running.db.link(other.id).state == "revoked"

    jsonl = cli(config, "audit", "export", "--since", "2026-01-01", "--format", "jsonl")
    assert jsonl.returncode == 0, jsonl.stderr
    kinds = [json.loads(line)["kind"] for line in jsonl.stdout.splitlines()]
    assert kinds.count("link.delivered") == 2 and "link.revoked" in kinds
    table_csv = cli(config, "audit", "export", "--since", "2026-01-01", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(table_csv.stdout)))
    assert {r["kind"] for r in rows} >= {"link.delivered", "link.revoked"}
    assert cli(config, "audit", "export", "--since", "2099-01-01").stdout == ""
