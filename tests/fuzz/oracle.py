"""The independent oracle: is an address external, and does one delivered copy still carry an
encrypted archive that a recipient could get out of it?

Shares no code with gateway/. It collects every blob a recipient could extract from the copy (MIME
parts parsed with compat32 and policy.default, raw and decoded payloads, attached messages,
preambles and epilogues, and lenient decodings of all of those: base64, quoted-printable, uuencode,
base64 runs in text, data: URIs), recurses into mail it finds, and asks three archive readers —
Python's zipfile, 7-Zip (`7zz`) and libarchive (`bsdtar`) — whether an archive is encrypted,
extracting unencrypted ones (bounded) to look inside. Everything is bounded (depth, blobs, bytes,
time, subprocess timeouts) and nothing raises: the oracle's own trouble goes to `errors`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import quopri
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message

MAX_DEPTH = 6
MAX_MEMBERS = 200
MAX_EXTRACT = 50 * 1024 * 1024  # bytes extracted from archives, per copy
MAX_BLOBS = 3000
MAX_TOTAL = 400 * 1024 * 1024  # bytes looked at, per copy
MAX_TEXT_SCAN = 20 * 1024 * 1024
TIME_BUDGET = 120.0  # seconds per copy
TOOL_TIMEOUT = 20.0
WRONG_PASSWORD = "fuzz-oracle-wrong-password"

ARCHIVE_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07")
_STREAM_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
TNEF_SIGNATURE = struct.pack("<I", 0x223E9F78)
_ATT_ATTACH_DATA = 0x0006800F

_LINES = re.compile(rb"\r\n|\n|\r")
_QUOTE = re.compile(rb"^(?:[ \t]*>)+[ \t]?")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]")
_DATA_URI = re.compile(rb"data:[^,;\s\"'<>]*(?:;[^,;\s\"'<>]*)*?;base64,([A-Za-z0-9+/=%\s]+)", re.I)
_UU_BEGIN = re.compile(rb"^[ \t>]*begin(-base64)?[ \t]+[0-7]{3,4}[ \t]+([^\r\n]*)(?=\r?\n|\r|\Z)", re.M)
_QP_HINT = re.compile(rb"=[0-9A-Fa-f]{2}|=\r?\n")
_HEADER_LINE = re.compile(rb"[!-9;-~]{1,76}:")
_KNOWN_HEADER = re.compile(rb"(?:from|to|cc|subject|date|message-id|mime-version|content-type|"
                           rb"content-transfer-encoding|content-disposition|received|return-path)"
                           rb"[ \t]*:", re.I)
_ENCRYPTED_7Z = re.compile(r"wrong password|cannot open encrypted|encrypted archive", re.I)
_ENCRYPTED_BSDTAR = re.compile(r"encrypt|passphrase|decryption", re.I)


@dataclass
class Report:
    findings: list[str] = field(default_factory=list)  # each a path to an encrypted archive
    errors: list[str] = field(default_factory=list)  # the oracle's own trouble, not violations
    opened_by: Counter = field(default_factory=Counter)  # tool -> archives it opened
    blobs: int = 0


def examine(data: bytes) -> Report:
    """Everything a recipient could get out of one delivered copy; never raises."""
    exam = _Examination()
    try:
        exam.blob(data, "", 0, mail=True)
    except Exception as error:  # noqa: BLE001 - the oracle must never crash the fuzzer
        exam.report.errors.append(f"oracle error: {type(error).__name__}: {error}")
    finally:
        exam.close()
    return exam.report


def has_archive_signature(data: bytes) -> bool:
    return (any(signature in data for signature in ARCHIVE_SIGNATURES)
            or data.startswith(_STREAM_MAGIC) or data[257:262] == b"ustar")


def looks_like_mail(data: bytes) -> bool:
    """Header lines, a known header among them, then a blank line."""
    known = False
    for line in _LINES.split(data[:65536].lstrip(b"\r\n"), 2000):
        if not line:
            return known
        if line[:1] in (b" ", b"\t"):
            continue
        if not _HEADER_LINE.match(line):
            return False
        known = known or _KNOWN_HEADER.match(line) is not None
    return False


def _join(where: str, step: str) -> str:
    return f"{where} → {step}" if where else step


def _text(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape") if value else b""


def lenient_base64(text: bytes, skip: int = 0) -> bytes:
    """Decode whatever base64 characters there are, ignoring everything else."""
    clean = _NOT_B64.sub(b"", text)[skip:]
    rest = len(clean) % 4
    clean = clean[:-1] if rest == 1 else clean + b"=" * ((4 - rest) % 4)
    return base64.b64decode(clean)


def _uu_line(line: bytes) -> bytes:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:  # the usual workaround for encoders that pad differently
        length = (((line[0] - 32) & 63) * 4 + 5) // 3 if line else 0
        try:
            return binascii.a2b_uu(line[:length])
        except binascii.Error:
            return b""


def uu_blocks(data: bytes) -> list[tuple[str, bytes]]:
    blocks = []
    for match in list(_UU_BEGIN.finditer(data))[:20]:
        is_b64, name = match.group(1), match.group(2).decode("latin-1").strip()
        chunks: list[bytes] = []
        for line in _LINES.split(data[match.end():].lstrip(b"\r\n"), 200_000)[:200_000]:
            line = _QUOTE.sub(b"", line).rstrip()
            if line in (b"end", b"===="):
                break
            chunks.append(line)
        if is_b64:
            blocks.append((name, lenient_base64(b"".join(chunks))))
        else:
            blocks.append((name, b"".join(_uu_line(line) for line in chunks if line)))
    return blocks


def base64_runs(data: bytes) -> list[tuple[int, bytes]]:
    """Runs of lines made of base64 characters (also after `> ` quotes), with their first line."""
    runs, run, start = [], [], 0

    def flush():
        if sum(map(len, run)) >= 32:
            runs.append((start, b"".join(run)))

    for number, line in enumerate(_LINES.split(data), 1):
        line = _QUOTE.sub(b"", line).strip()
        if (len(line) >= 12 and b" " not in line and b"\t" not in line
                and len(line.translate(None, _B64_ALPHABET)) * 10 <= len(line)):
            if not run:
                start = number
            run.append(line)
        else:
            flush()
            run = []
    flush()
    return runs


def _interesting(data: bytes) -> bool:
    if len(data) < 16:
        return False
    if has_archive_signature(data) or data.startswith(TNEF_SIGNATURE) or looks_like_mail(data):
        return True
    head = data[: 1 << 20]
    if not _mostly_ascii(head):
        return False  # binary: a decoding that produced noise
    return bool(b"begin" in head or b"data:" in head or base64_runs(head))


def _mostly_ascii(data: bytes) -> bool:
    return len(data.translate(None, bytes(range(0x80, 0x100)))) * 20 >= len(data) * 19


def _walk(message: Message, path: str = ""):
    yield path, message
    payload = message.get_payload()
    if isinstance(payload, list):
        for number, sub in enumerate(payload, 1):
            if isinstance(sub, Message):
                yield from _walk(sub, f"{path}.{number}" if path else str(number))


def _run(args: list[str], stdout=subprocess.PIPE) -> tuple[int, str, str] | None:
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                              timeout=TOOL_TIMEOUT, start_new_session=True,
                              env={**os.environ, "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        return None
    out = done.stdout.decode("utf-8", "replace") if done.stdout else ""
    return done.returncode, out, done.stderr.decode("utf-8", "replace")


class _Examination:
    def __init__(self) -> None:
        self.report = Report()
        self.seen: set[bytes] = set()
        self.total = 0
        self.extracted = 0
        self.deadline = time.monotonic() + TIME_BUDGET
        self.tmp: str | None = None
        self.files = 0

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def find(self, where: str) -> None:
        if where not in self.report.findings:
            self.report.findings.append(where)

    def guarded(self, where: str, step, *args) -> None:
        try:
            step(*args)
        except Exception as error:  # noqa: BLE001
            self.report.errors.append(f"{where or 'message'}: {step.__name__}: "
                                      f"{type(error).__name__}: {error}"[:400])

    def blob(self, data: bytes, where: str, depth: int, mail: bool = False) -> None:
        if not data or depth > MAX_DEPTH:
            return
        if (len(self.seen) >= MAX_BLOBS or self.total >= MAX_TOTAL
                or time.monotonic() > self.deadline):
            if not any(e.startswith("budget") for e in self.report.errors):
                self.report.errors.append(f"budget exhausted at {where}")
            return
        key = hashlib.sha256(data).digest()
        if key in self.seen:
            return
        self.seen.add(key)
        self.total += len(data)
        self.report.blobs += 1
        label = where or "whole message"
        if mail or looks_like_mail(data):
            self.guarded(label, self.mail, data, where, depth)
        self.guarded(label, self.archives, data, label, depth)
        if len(data) <= MAX_TEXT_SCAN:
            self.guarded(label, self.texts, data, label, depth)

    # -- mail ----------------------------------------------------------------------------------

    def mail(self, data: bytes, where: str, depth: int) -> None:
        for parse_policy in (policy.compat32, policy.default):
            message = message_from_bytes(data, policy=parse_policy)
            for path, part in _walk(message):
                self.guarded(where, self.part, part, path, where, depth)

    def part(self, part: Message, path: str, where: str, depth: int) -> None:
        ctype = part.get_content_type()
        label = _join(where, f"part {path or '0'} ({ctype})")
        if part.is_multipart():
            for name in ("preamble", "epilogue"):
                self.blob(_text(getattr(part, name, None)), _join(label, name), depth + 1)
            if part.get_content_maintype() == "message":
                for sub in part.get_payload():
                    if isinstance(sub, Message):
                        self.blob(sub.as_bytes(policy=policy.compat32), _join(label, "attached message"),
                                  depth + 1)
            return
        cte = str(part.get("content-transfer-encoding", "")).strip().lower() or "payload"
        self.blob(part.get_payload(decode=True) or b"", _join(label, cte), depth + 1)
        raw = _text(part._payload)  # as received (get_payload() would decode 8-bit text)
        self.blob(raw, _join(label, "raw"), depth + 1)
        for skip in range(4):
            decoded = lenient_base64(raw, skip)
            if _interesting(decoded):
                self.blob(decoded, _join(label, "lenient base64"), depth + 1)
                break

    # -- text encodings ------------------------------------------------------------------------

    def texts(self, data: bytes, where: str, depth: int) -> None:
        for line, run in base64_runs(data)[:200]:
            for skip in range(4):
                decoded = lenient_base64(run, skip)
                if _interesting(decoded):
                    self.blob(decoded, _join(where, f"base64 text at line {line}"), depth + 1)
                    break
        for match in list(_DATA_URI.finditer(data))[:50]:
            payload = urllib.parse.unquote_to_bytes(match.group(1))
            self.blob(lenient_base64(payload), _join(where, "data: URI"), depth + 1)
        for name, decoded in uu_blocks(data):
            self.blob(decoded, _join(where, f"uuencode {name!r}"), depth + 1)
        if _QP_HINT.search(data) and _mostly_ascii(data) and not looks_like_mail(data):
            decoded = quopri.decodestring(data)
            if decoded != data and _interesting(decoded):
                self.blob(decoded, _join(where, "quoted-printable"), depth + 1)

    # -- archives ------------------------------------------------------------------------------

    def archives(self, data: bytes, where: str, depth: int) -> None:
        if b"PK\x05\x06" in data:
            self.zipfile(data, where, depth)
        if data.startswith(b"\x1f\x8b"):
            try:
                inflated = zlib.decompressobj(wbits=31).decompress(data, MAX_EXTRACT)
            except zlib.error:
                inflated = b""  # not gzip after all; 7zz and bsdtar still get their turn
            self.blob(inflated, _join(where, "gzip"), depth + 1)
        if data[257:262] == b"ustar":
            self.tar(data, where, depth)
        if data.startswith(TNEF_SIGNATURE):
            for number, body in enumerate(tnef_attachments(data), 1):
                self.blob(body, _join(where, f"TNEF attachment {number}"), depth + 1)
        if has_archive_signature(data):
            path = self.tmpfile(data)
            self.guarded(where, self.sevenzip, path, where, depth)
            self.guarded(where, self.libarchive, path, where, depth)
            for signature in (b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07"):
                offset = data.find(signature)
                if offset > 0:  # embedded after other bytes: hand the tools the archive itself
                    self.blob(data[offset:], _join(where, f"carved at {offset}"), depth + 1)

    def zipfile(self, data: bytes, where: str, depth: int) -> None:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - not a ZIP zipfile can read
            return
        with archive:
            self.report.opened_by["zipfile"] += 1
            infos = archive.infolist()
            encrypted = [i.filename for i in infos if i.flag_bits & 1 or i.compress_type == 99]
            if encrypted:
                more = f" (+{len(encrypted) - 1} more)" if len(encrypted) > 1 else ""
                self.find(_join(where, f"zipfile: encrypted member {encrypted[0]!r}{more}"))
                return
            for info in infos[:MAX_MEMBERS]:
                if info.is_dir():
                    continue
                chunks: list[bytes] = []
                try:
                    with archive.open(info) as member:
                        while self.extracted < MAX_EXTRACT and (chunk := member.read(1 << 20)):
                            chunks.append(chunk)
                            self.extracted += len(chunk)
                except Exception:  # noqa: BLE001 - bad CRC, unknown method: keep what came out
                    pass
                self.blob(b"".join(chunks), _join(where, f"zipfile member {info.filename!r}"), depth + 1)

    def tar(self, data: bytes, where: str, depth: int) -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive.getmembers()[:MAX_MEMBERS]:
                if info.isfile() and self.extracted + info.size <= MAX_EXTRACT:
                    member = archive.extractfile(info)
                    if member is not None:
                        content = member.read()
                        self.extracted += len(content)
                        self.blob(content, _join(where, f"tar member {info.name!r}"), depth + 1)

    def tmpfile(self, data: bytes) -> str:
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix="fuzz-oracle-")
        self.files += 1
        path = os.path.join(self.tmp, f"blob-{self.files}.bin")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def sevenzip(self, path: str, where: str, depth: int) -> None:
        result = _run(["7zz", "l", "-slt", f"-p{WRONG_PASSWORD}", "-sccUTF-8", "--", path])
        if result is None:
            self.report.errors.append(f"{where}: 7zz l timed out")
            return
        _, out, err = result
        text = out + err
        head, _, entries = out.partition("\n----------\n")
        if "Type = " in head:
            self.report.opened_by["7zz"] += 1
        blocks = [b for b in entries.split("\n\n") if "Path = " in b]
        for block in blocks:
            if re.search(r"^Encrypted = \+", block, re.M):
                name = re.search(r"^Path = (.*)$", block, re.M).group(1)
                self.find(_join(where, f"7zz: encrypted member {name!r}"))
                return
        if _ENCRYPTED_7Z.search(text):
            line = next(l for l in text.splitlines() if _ENCRYPTED_7Z.search(l))
            self.find(_join(where, f"7zz: {line.strip()}"))
            return
        sizes = [int(s) for s in re.findall(r"^Size = (\d+)$", entries, re.M)]
        if not blocks or len(blocks) > MAX_MEMBERS or self.extracted + sum(sizes) > MAX_EXTRACT:
            return
        target = tempfile.mkdtemp(dir=self.tmp)
        result = _run(["7zz", "x", "-y", f"-p{WRONG_PASSWORD}", "-sccUTF-8", f"-o{target}", "--", path])
        if result is not None and _ENCRYPTED_7Z.search(result[1] + result[2]):
            self.find(_join(where, "7zz: extraction needs a password"))
        for root, _, names in os.walk(target):
            for name in sorted(names):
                full = os.path.join(root, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                with open(full, "rb") as handle:
                    content = handle.read(MAX_EXTRACT - self.extracted)
                self.extracted += len(content)
                member = os.path.relpath(full, target)
                self.blob(content, _join(where, f"7zz member {member!r}"), depth + 1)
        shutil.rmtree(target, ignore_errors=True)

    def libarchive(self, path: str, where: str, depth: int) -> None:
        listed = _run(["bsdtar", "-tvf", path])
        if listed is None:
            self.report.errors.append(f"{where}: bsdtar -t timed out")
            return
        code, out, err = listed
        opened = code == 0 or bool(out.strip())
        if opened:
            self.report.opened_by["bsdtar"] += 1
            extracted = _run(["bsdtar", "--passphrase", WRONG_PASSWORD, "-xOf", path],
                             stdout=subprocess.DEVNULL)
            err += extracted[2] if extracted else ""
        for line in err.splitlines():
            if _ENCRYPTED_BSDTAR.search(line):
                self.find(_join(where, f"bsdtar: {line.strip()}"))
                return


def tnef_attachments(data: bytes) -> list[bytes]:
    """attAttachData bodies of a TNEF stream (signature, key, then level/id/length/data/checksum)."""
    found, position = [], 6
    while position + 9 <= len(data) and len(found) < MAX_MEMBERS:
        attribute, length = struct.unpack_from("<II", data, position + 1)
        body = data[position + 9: position + 9 + length]
        if attribute == _ATT_ATTACH_DATA or has_archive_signature(body[:64]):
            found.append(body)
        position += 9 + length + 2
    return found
