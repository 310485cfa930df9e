"""Inspection benchmark: what classifying a mail for a recipient outside costs, per kind of mail.

For each mail it times, in one run on the same bytes:
  reference  the standard library's parse alone (BytesParser, compat32): the floor any
             MIME-reading gateway pays
  gateway    gateway.pipeline.classify.parse_and_classify with a content inspector, as the relay
             runs it for mail going outside (structure limits, parse, every leaf looked into)
  baseline   (with --baseline PATH) the same call in an older checkout, in a subprocess
and prints milliseconds per mail (median of --rounds) and the ratios gateway/reference and
gateway/baseline — ratios survive a shared, noisy machine.

    .venv/bin/python bench/inspect_cost.py [--rounds 15] [--baseline /tmp/base]
        [--write-docs docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
import zlib
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.relay_throughput import machine_line, write_docs  # noqa: E402
from gateway.containers.contents import InspectionLimits  # noqa: E402
from gateway.pipeline.classify import content_inspector, parse_and_classify  # noqa: E402
from gateway.pipeline.parse import MimeLimits  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"
MARKERS = ("<!-- inspect_cost:begin -->", "<!-- inspect_cost:end -->")
HEAD = (b"From: <somu@city.example.lg.jp>\r\nTo: <tanaka@partner.example.com>\r\n"
        b"Subject: bench\r\nMIME-Version: 1.0\r\n")

# Run in the baseline tree: time its parse_and_classify on each mail file given.
BASELINE = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from gateway.pipeline.classify import parse_and_classify
from gateway.pipeline.parse import MimeLimits
rounds, out = int(sys.argv[2]), {}
for path in sys.argv[3:]:
    raw = open(path, "rb").read()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        parse_and_classify(raw, MimeLimits())
        times.append(time.perf_counter() - start)
    out[path] = statistics.median(times)
print(json.dumps(out))
"""


def _b64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"


def _mixed(*parts: bytes) -> bytes:
    body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts)
    return HEAD + b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n" + body + b"--B--\r\n"


def _attachment(name: str, data: bytes, content_type: str = "application/octet-stream") -> bytes:
    return (f"Content-Type: {content_type}; name=\"{name}\"\r\nContent-Transfer-Encoding: base64"
            f"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n").encode() + _b64(data)


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "お世話になっております。\r\n".encode() * 40


def _office_like(size: int) -> bytes:
    """A docx-shaped plain ZIP: XML members (compressible text) and a PNG-like blob."""
    buffer = io.BytesIO()
    rows = b"".join(b"<w:p><w:r><w:t>row %d of the report</w:t></w:r></w:p>" % i for i in range(size // 60))
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", b"<Types/>" * 20)
        archive.writestr("word/document.xml", rows)
        archive.writestr("word/media/image1.png", b"\x89PNG" + os.urandom(size // 2))
    return buffer.getvalue()


def _pdf_like(size: int) -> bytes:
    streams = b"".join(
        b"%d 0 obj\n<< /Filter /FlateDecode >>\nstream\n" % n
        + zlib.compress(b"BT /F1 12 Tf (page %d text) Tj ET\n" % n * 200) + b"\nendstream\nendobj\n"
        for n in range(20))
    return b"%PDF-1.7\n" + streams + os.urandom(max(0, size - len(streams))) + b"\n%%EOF\n"


def mails() -> dict[str, bytes]:
    aes = (CORPUS / "files" / "01_aes256_7zip_ja.zip").read_bytes()
    forwarded = _mixed(TEXT, _attachment("a.zip", aes, "application/zip"))
    return {
        "2 KB plain text": HEAD + TEXT,
        "corpus 01 (Outlook, AES ZIP)": (CORPUS / "mail" / "01_outlook_jis_aes256.eml").read_bytes(),
        "2 MB AES ZIP": _mixed(TEXT, _attachment("a.zip", aes + os.urandom(1_500_000), "application/zip")),
        "1 MB plain .docx-like ZIP": _mixed(TEXT, _attachment("report.docx", _office_like(1_500_000))),
        "2 MB PDF with Flate streams": _mixed(TEXT, _attachment("a.pdf", _pdf_like(1_500_000))),
        "200 KB text attachment": _mixed(TEXT, _attachment("log.txt", b"2026-12-07 line of a log\n" * 8000)),
        "forwarded mail (base64 rfc822)": _mixed(TEXT, b"Content-Type: message/rfc822\r\n"
                                                 b"Content-Transfer-Encoding: base64\r\n\r\n"
                                                 + _b64(forwarded)),
    }


def median_seconds(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(rounds: int, baseline: Path | None, workdir: Path) -> list[tuple[str, int, float, float, float | None]]:
    limits = MimeLimits()
    rows, files = [], {}
    for index, (name, raw) in enumerate(mails().items()):
        parse = median_seconds(lambda: BytesParser(policy=compat32).parsebytes(raw), rounds)
        gateway = median_seconds(
            lambda: parse_and_classify(raw, limits, content_inspector(limits, InspectionLimits())), rounds)
        path = workdir / f"mail{index}.eml"
        path.write_bytes(raw)
        files[name] = path
        rows.append([name, len(raw), parse, gateway, None])
    if baseline is not None:
        result = subprocess.run([sys.executable, "-c", BASELINE, str(baseline), str(rounds),
                                 *map(str, files.values())], capture_output=True, text=True, check=True)
        times = json.loads(result.stdout)
        for row in rows:
            row[4] = times[str(files[row[0]])]
    return [tuple(row) for row in rows]


def report(rows, rounds: int, baseline: Path | None, argv: list[str], workdir: Path) -> str:
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on: {machine_line(workdir, ())}.",
        "",
        f"Command: `.venv/bin/python bench/inspect_cost.py {' '.join(argv)}`".rstrip() + "  ",
        f"Median of {rounds} rounds per mail, in one process"
        + (f"; baseline: the same call in `{baseline}` (an older checkout)." if baseline else "."),
        "",
        "| mail | size | stdlib parse ms | gateway classify ms | gateway / parse |"
        + (" baseline ms | gateway / baseline |" if baseline else ""),
        "|---|--:|--:|--:|--:|" + ("--:|--:|" if baseline else ""),
    ]
    for name, size, parse, gateway, base in rows:
        line = f"| {name} | {size / 1e6:.2f} MB | {parse * 1e3:.1f} | {gateway * 1e3:.1f} | {gateway / parse:.2f} |"
        if baseline:
            line += f" {base * 1e3:.1f} | {gateway / base:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", type=Path, default=None, help="an older checkout to compare")
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"inspect-cost-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    block = report(measure(args.rounds, args.baseline, workdir), args.rounds, args.baseline, argv, workdir)
    print(block)
    if args.write_docs is not None:
        write_docs(args.write_docs, block, MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
