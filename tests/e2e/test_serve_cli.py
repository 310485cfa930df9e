"""What a newcomer does: start `ppap-gateway serve` on the embedded defaults, send the sample,
find the rewritten mail in the outbox. Runs the real command as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from tests.support.processes import ROOT, free_port, wait_listening
from tests.support.received import links_in



def test_serve_with_example_config_writes_rewritten_sample_to_outbox(tmp_path):
    port, admin_port = free_port(), free_port()
    outbox, data = tmp_path / "outbox", tmp_path / "data"
    command = [
        sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "config" / "gateway.toml"),
        "-o", f"smtp.listen=127.0.0.1:{port}", "-o", f"next_hop.url=outbox:{outbox}",
        "-o", f"storage.data_dir={data}", "-o", f"storage.database={data}/gw.sqlite3",
        "-o", f"storage.master_key_file={data}/master.key",
        "-o", f"admin.listen=127.0.0.1:{admin_port}", "-o", f"portal.listen=127.0.0.1:{free_port()}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PPAP_GATEWAY_MASTER_KEY"}
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_listening(port, process)
        sent = subprocess.run(
            [sys.executable, "-m", "gateway", "send-sample", "--server", f"127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert sent.returncode == 0 and sent.stdout.startswith("250"), sent.stdout + sent.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=10) as health:
            assert health.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as metrics:
            assert b'ppap_messages_total{decision="convert"} 1.0' in metrics.read()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    (eml,) = outbox.glob("*.eml")
    (sidecar,) = outbox.glob("*.json")
    assert json.loads(sidecar.read_text())["rcpt_tos"] == ["tanaka@partner.example.com"]
    assert len(links_in(eml.read_bytes())) == 1
    assert oct((data / "master.key").stat().st_mode & 0o777) == "0o600"
    message_lines = [line for line in stderr.splitlines() if "queue_id=" in line]
    assert len(message_lines) == 1
    assert "decision=convert" in message_lines[0] and "reply=250" in message_lines[0]


def test_purge_command_reports_what_it_freed(tmp_path):
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "purge", "--config", str(ROOT / "config" / "gateway.toml"),
         "-o", f"storage.data_dir={data}", "-o", f"storage.database={data}/gw.sqlite3",
         "-o", f"storage.master_key_file={data}/master.key"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("purged 0 transfers")
