"""Operations on the running gateway: health, metrics, and the purge of expired transfers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.support.processes import free_port
from tests.support.running import corpus_mail, send_corpus


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_healthz_reports_a_down_next_hop(start_gateway):
    running = start_gateway(next_hop_url=f"smtp://127.0.0.1:{free_port()}")
    status, body = get(running.gateway.admin_port, "/healthz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["store"] == "ok" and checks["next_hop"] != "ok"


def test_metrics_count_messages_bytes_and_links(sink, start_gateway):
    running = start_gateway()
    assert send_corpus(running.port, corpus_mail("01_outlook_jis_aes256"))[0] == 250
    assert send_corpus(running.port, corpus_mail("13_no_attachment"))[0] == 250
    status, body = get(running.gateway.admin_port, "/metrics")
    assert status == 200
    text = body.decode()
    assert 'ppap_messages_total{decision="convert"} 1.0' in text
    assert 'ppap_messages_total{decision="pass"} 1.0' in text
    assert "ppap_links_created_total 2.0" in text
    assert "ppap_bytes_stored_total 6878.0" in text
    assert "ppap_relay_seconds_count 2.0" in text


def test_expired_transfer_is_purged_but_its_events_stay(sink, start_gateway):
    running = start_gateway()
    assert send_corpus(running.port, corpus_mail("01_outlook_jis_aes256"))[0] == 250
    blobs = running.gateway.blobs
    assert sum(1 for _ in blobs.iter_blob_ids()) == 1
    running.clock.advance(days=6)
    assert running.call(running.gateway.purge_now()).transfers_purged == 0
    running.clock.advance(days=2)
    report = running.call(running.gateway.purge_now())
    assert report.transfers_purged == 1 and report.bytes_freed > 0
    assert sum(1 for _ in blobs.iter_blob_ids()) == 0
    kinds = [e.kind for e in running.db.events()]
    assert "link.delivered" in kinds and "transfer.purged" in kinds
