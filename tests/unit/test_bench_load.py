"""The load bench's own arithmetic (bench/postfix_load.py and its modules): the targets' ✓/✗,
the memory bound, the profile summary and the mails it sends; no process is started here."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pyzipper

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # the bench's modules import each other as scripts do

import load_mails
import load_profile
from load_paths import Cell, GatewayFacts, Measurement
from load_report import Results, target_table, targets
from proc_tree import TreeUsage

MB = 1_000_000
BIG, SMALL = Cell("2mb", 20, 100), Cell("2kb", 20, 1000)


def run(path: str, cell: Cell, seconds: float, cpu: float = 0.0, rss: int = 0,
        own_ms: list[float] | None = None) -> Measurement:
    gateway = None
    if path in ("gateway", "postfix+gateway"):
        # the memory target reads the sampled Pss; the sum of VmHWM is only shown beside it
        gateway = GatewayFacts(TreeUsage(cpu, 10 * rss, 1, peak_pss_bytes=rss), own_ms or [1.0], [])
    return Measurement(path, cell, seconds=seconds, at_sink=cell.messages, gateway=gateway)


def results(gateway_2kb_seconds: float, pending_seconds: float = 1.0, rss: int = 100 * MB) -> Results:
    runs = [
        run("postfix", SMALL, 2.0), run("gateway", SMALL, gateway_2kb_seconds, cpu=0.5, rss=70 * MB),
        run("postfix", BIG, 2.0), run("postfix+md", BIG, 4.0),
        run("gateway", BIG, 2.0, cpu=1.0, rss=rss, own_ms=[50.0] * 99 + [400.0]),
        run("postfix+gateway", BIG, 1.9, cpu=1.0, rss=rss),
    ]
    pending = {0: [run("gateway", SMALL, 1.0)], 10_000: [run("gateway", SMALL, pending_seconds)]}
    return Results([BIG, SMALL], ["postfix", "postfix+md", "gateway", "postfix+gateway"], runs, pending,
                   {"2mb": 2 * MB, "2kb": 2_000})


def by_name(found, start: str):
    return next(t for t in found if t.what.startswith(start))


def test_rate_targets_compare_the_right_paths_and_say_met_or_not():
    fast = targets(results(gateway_2kb_seconds=1.0))  # 1000/s vs plain Postfix's 500/s
    assert by_name(fast, "2 KB plain, 20 sessions: gateway").measured == "2.00×"
    assert by_name(fast, "2 KB plain, 20 sessions: gateway").met is True
    slow = targets(results(gateway_2kb_seconds=2.0))  # 500/s: 1.0×, under 1.2×
    assert by_name(slow, "2 KB plain, 20 sessions: gateway").met is False
    peer = by_name(fast, "2 MB AES ZIP, 20 sessions: Postfix")  # 52.6/s vs MIMEDefang's 25/s
    assert peer.measured == "2.11×" and peer.met is True


def test_pending_cpu_latency_and_memory_targets():
    found = targets(results(gateway_2kb_seconds=1.0, pending_seconds=1.25))
    assert by_name(found, "2 KB plain, 20 sessions, 10,000").measured == "0.80×"
    assert by_name(found, "2 KB plain, 20 sessions, 10,000").met is False
    assert by_name(found, "gateway CPU per plain").measured == "0.50 ms"  # 0.5 s / 1000
    assert by_name(found, "gateway CPU per 2 MB").measured == "10.00 ms"
    assert by_name(found, "added latency p99").measured == "50 ms"  # nearest rank: 99th of 100
    memory = by_name(found, "gateway peak memory")
    # the worst cell is shown: 70 of 80 MB (2 KB) before 100 of 160 MB (2 MB)
    assert memory.met is True and memory.measured.startswith("70 MB at 2 KB plain × 20")
    too_big = by_name(targets(results(1.0, rss=161 * MB)), "gateway peak memory")
    assert too_big.met is False and "bound 160 MB" in too_big.measured  # 2 × 20 × 2 MB + 80


def test_a_target_not_measured_is_neither_met_nor_failed():
    empty = Results([BIG, SMALL], ["gateway"], [], {}, {"2mb": 2 * MB, "2kb": 2_000})
    assert all(t.met is None for t in targets(empty))
    assert "| — |" in "\n".join(target_table(empty))


def test_profile_summary_skips_waiting_threads_and_start_up_frames(tmp_path):
    raw = tmp_path / "spy.raw"
    raw.write_text(
        'process 1:"python -m gateway";<module> (gateway/__main__.py:3);main (gateway/cli.py:9);'
        "classify (gateway/pipeline/classify.py:40);b64decode (base64.py:88) 30\n"
        'process 1:"python -m gateway";<module> (gateway/__main__.py:3);main (gateway/cli.py:9);'
        "write (gateway/store/blobs.py:12) 10\n"
        'process 1:"python -m gateway";run (threading.py:1);EpollSelector.select (selectors.py:468) 60\n')
    profile = load_profile.summarise(raw)
    assert profile.samples == 40
    assert profile.self_share[0] == ("b64decode (base64.py)", 0.75)
    assert [name for name, _ in profile.inclusive_share] == [
        "classify (gateway/pipeline/classify.py)", "write (gateway/store/blobs.py)"]


def test_the_mails_are_the_same_bytes_every_time_and_the_zip_is_encrypted():
    ppap = load_mails.ppap_mail("hoken@city.example.lg.jp", payload_bytes=20_000)
    assert ppap == load_mails.ppap_mail("hoken@city.example.lg.jp", payload_bytes=20_000)
    archive = pyzipper.AESZipFile(io.BytesIO(load_mails.aes_zip(20_000)))
    assert archive.infolist()[0].flag_bits & 1  # encrypted: what the gateway and the peer look for
    assert 1900 < len(load_mails.plain_mail("hoken@city.example.lg.jp")) < 2600


def test_mail_files_for_smtp_source_have_lf_line_ends(tmp_path):
    path = load_mails.write_lf(tmp_path / "m.eml", b"A: b\r\n\r\nbody\r\n")
    assert path.read_bytes() == b"A: b\n\nbody\n"
