"""Hostile ZIPs built byte by byte: every one gets one verdict from inspect_zip and extract_members,
bombs are refused before anything big is inflated, and names never become paths."""

from __future__ import annotations

import ast
import io
import random
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.model import ZipVerdict
from gateway.unlock.extract import (
    ExtractLimits,
    ExtractRefused,
    extract_members,
    prove_password,
)
from gateway.unlock.zipentries import Budget, read_directory
from gateway.containers.zipinspect import inspect_zip

PASSWORD = "h0stile-Test"
LIMITS = ExtractLimits()
UNLIMITED = ExtractLimits(max_total_bytes=2**40, max_member_bytes=2**40, max_ratio=2**40)
GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_EOCD = struct.Struct("<4s4H2LH")


# --- a ZIP writer that can lie ----------------------------------------------------------------


def deflated(content: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(content) + compressor.flush()


def zipcrypto(plain: bytes, password: bytes, check_byte: int) -> bytes:
    """Traditional PKWARE encryption (APPNOTE 6.1), 12-byte header ending in check_byte."""
    keys = [0x12345678, 0x23456789, 0x34567890]

    def crc_step(value: int, byte: int) -> int:
        return ~zlib.crc32(bytes([byte]), ~value & 0xFFFFFFFF) & 0xFFFFFFFF

    def update(byte: int) -> None:
        keys[0] = crc_step(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc_step(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    cipher = bytearray()
    for byte in random.Random(5).randbytes(11) + bytes([check_byte]) + plain:
        stream = keys[2] | 2
        cipher.append(byte ^ (((stream * (stream ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(cipher)


@dataclass
class Member:
    """One member; the local_* fields make the local header say something else."""

    name: bytes
    content: bytes = b"hello, hostile world\n" * 4
    method: int = 8
    encrypted: bool = False
    central_extra: bytes = b""
    local_name: bytes | None = None
    local_flags: int | None = None
    local_method: int | None = None
    local_compressed: int | None = None
    local_uncompressed: int | None = None
    payload: bytes | None = None  # stored bytes to use as they are (already compressed)
    declared_size: int | None = None
    offset: int | None = None  # where the central entry points; default its own local header

    def stored(self) -> bytes:
        if self.payload is not None:
            return self.payload
        data = deflated(self.content) if self.method == 8 else self.content
        if self.encrypted:
            data = zipcrypto(data, PASSWORD.encode(), zlib.crc32(self.content) >> 24)
        return data

    @property
    def flags(self) -> int:
        return 0x1 if self.encrypted else 0


@dataclass
class Layout:
    """Where build() put things, for tests that patch the bytes afterwards."""

    local_offsets: list[int] = field(default_factory=list)
    directory_start: int = 0
    eocd: int = 0


def build(
    members: list[Member], *, comment: bytes = b"", zip64: bool = False, layout: Layout | None = None
) -> bytes:
    layout = layout or Layout()
    body = bytearray()
    directory = bytearray()
    for member in members:
        stored = member.stored()
        size = len(member.content) if member.declared_size is None else member.declared_size
        crc = zlib.crc32(member.content)
        offset = len(body) if member.offset is None else member.offset
        layout.local_offsets.append(len(body))
        body += _LOCAL.pack(
            b"PK\x03\x04", 20, _given(member.local_flags, member.flags),
            _given(member.local_method, member.method), 0, 0x21, crc,
            _given(member.local_compressed, len(stored)), _given(member.local_uncompressed, size),
            len(_given(member.local_name, member.name)), 0,
        ) + _given(member.local_name, member.name) + stored
        directory += _CENTRAL.pack(
            b"PK\x01\x02", 0x031E, 20, member.flags, member.method, 0, 0x21, crc, len(stored),
            size, len(member.name), len(member.central_extra), 0, 0, 0, 0, offset,
        ) + member.name + member.central_extra
    layout.directory_start = len(body)
    count = len(members)
    ending = bytearray()
    if zip64:
        record = struct.pack(
            "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory), len(body)
        )
        ending += record + struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body) + len(directory), 1)
        counts = (0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    else:
        counts = (count, count, len(directory), len(body))
    layout.eocd = len(body) + len(directory) + len(ending)
    ending += _EOCD.pack(b"PK\x05\x06", 0, 0, *counts, len(comment)) + comment
    return bytes(body + directory + ending)


def _given(override, default):
    return default if override is None else override


def two_members(encrypted: bool = False, **changes) -> list[Member]:
    second = Member(b"second.txt", b"second member\n" * 8, encrypted=encrypted)
    for key, value in changes.items():
        setattr(second, key, value)
    return [Member(b"first.txt", encrypted=encrypted), second]


def measured(action: Callable[[], object]) -> tuple[int, float]:
    """(peak bytes allocated, seconds) while action runs; exceptions are the caller's to expect."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        action()
    except ExtractRefused:
        pass
    finally:
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, seconds


def refusal(data: bytes, limits: ExtractLimits = LIMITS) -> str:
    with pytest.raises(ExtractRefused) as refused:
        extract_members(data, PASSWORD, limits)
    return refused.value.reason


def assert_one_verdict(data: bytes) -> None:
    """inspect_zip calls it unreadable (CORRUPT_ZIP, or ENCRYPTED_ZIP salvaged from the local
    headers, with the reason given) and extraction refuses it as corrupt, whatever the password."""
    report = inspect_zip(data)
    assert report.reason, report
    assert report.verdict in (ZipVerdict.CORRUPT_ZIP, ZipVerdict.ENCRYPTED_ZIP)
    assert refusal(data) == "corrupt"
    assert prove_password(data, PASSWORD) is False


# --- the honest archives the hostile ones are made from ----------------------------------------


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "zipcrypto"])
@pytest.mark.parametrize("zip64", [False, True], ids=["zip32", "zip64"])
def test_the_honest_base_archives_are_read_and_extracted(encrypted: bool, zip64: bool) -> None:
    data = build(two_members(encrypted), zip64=zip64)
    report = inspect_zip(data)
    assert report.reason == ""
    assert report.verdict is (ZipVerdict.ENCRYPTED_ZIP if encrypted else ZipVerdict.PLAIN_ZIP)
    result = extract_members(data, PASSWORD, LIMITS)
    assert [f.display_name for f in result.files] == ["first.txt", "second.txt"]
    assert result.files[1].data == b"second member\n" * 8
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # the standard library agrees it is valid
        assert archive.namelist() == ["first.txt", "second.txt"]


# --- local and central headers that disagree ---------------------------------------------------


DISAGREEMENTS = {
    "name": {"local_name": b"other.exe"},
    "name-case": {"local_name": b"SECOND.txt"},
    "compressed-size": {"local_compressed": 40},
    "uncompressed-size": {"local_uncompressed": 1},
    "method": {"local_method": 0},
    "encryption-flag-only-local": {"local_flags": 0x1},
}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "zipcrypto"])
@pytest.mark.parametrize("change", DISAGREEMENTS.values(), ids=DISAGREEMENTS.keys())
def test_local_header_disagreeing_with_the_central_directory_gets_one_verdict(
    change: dict, encrypted: bool
) -> None:
    if encrypted and "local_flags" in change:
        change = {"local_flags": 0}  # central says encrypted, the local header says plain
    assert_one_verdict(build(two_members(encrypted, **change)))


def test_encryption_flag_only_in_the_local_header_still_blocks_the_zip() -> None:
    report = inspect_zip(build(two_members(local_flags=0x1)))
    assert report.verdict is ZipVerdict.ENCRYPTED_ZIP  # policy holds it back, never passes it


def test_data_descriptor_archives_with_zero_local_sizes_are_not_a_disagreement() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(_Unseekable(buffer), "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("streamed.txt", b"written without seeking\n" * 10)
    data = buffer.getvalue()
    assert struct.unpack_from("<H", data, 6)[0] & 0x8  # really a data-descriptor archive
    assert inspect_zip(data).reason == ""
    assert extract_members(data, "", LIMITS).files[0].data == b"written without seeking\n" * 10


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes sizes in data descriptors, as pipes force."""

    def __init__(self, target: io.BytesIO) -> None:
        self._target = target

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self._target.write(data)


# --- broken directory records --------------------------------------------------------------------


def _patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


def zip64_locator_outside_the_file() -> bytes:
    data = build(two_members(), zip64=True)
    return _patched(data, data.rfind(b"PK\x06\x07") + 8, "<Q", len(data) + 4096)


def zip64_record_directory_offset_past_the_end() -> bytes:
    data = build(two_members(), zip64=True)
    return _patched(data, data.rfind(b"PK\x06\x06") + 48, "<Q", 2**40)


def zip64_record_size_field_wrong() -> bytes:
    data = build(two_members(), zip64=True)
    return _patched(data, data.rfind(b"PK\x06\x06") + 4, "<Q", 12)


def zip64_extra_field_longer_than_its_block() -> bytes:
    member = Member(b"second.txt", central_extra=struct.pack("<2H", 0x0001, 16) + b"\0" * 8)
    return build([Member(b"first.txt"), member])


def zip64_extra_field_too_short_for_a_saturated_size() -> bytes:
    data = build([Member(b"first.txt"), Member(b"second.txt", central_extra=struct.pack("<2HL", 1, 4, 0))])
    second = data.rfind(b"PK\x01\x02")
    return _patched(data, second + 24, "<L", 0xFFFFFFFF)


def unknown_extra_field_overrunning_its_block() -> bytes:
    return build([Member(b"first.txt"), Member(b"second.txt", central_extra=struct.pack("<2H", 0xCAFE, 200))])


def central_directory_truncated_with_its_end_record_kept() -> bytes:
    layout = Layout()
    data = build(two_members(), layout=layout)
    return data[: layout.eocd - 20] + data[layout.eocd :]


def central_directory_truncated_with_the_file() -> bytes:
    layout = Layout()
    data = build(two_members(), layout=layout)
    return data[: layout.directory_start + 60]


def comment_claiming_a_huge_length() -> bytes:
    data = build(two_members(), comment=b"abc")
    return _patched(data, len(data) - 5, "<H", 0xFFFF)


def more_entries_in_the_directory_than_counted() -> bytes:
    data = build(two_members())
    eocd = data.rfind(b"PK\x05\x06")
    return _patched(data, eocd + 8, "<2H", 1, 1)


def central_entry_pointing_into_the_central_directory() -> bytes:
    layout = Layout()
    build(two_members(), layout=layout)
    return build(two_members(offset=layout.directory_start))


def member_data_running_into_the_central_directory() -> bytes:
    data = build(two_members())
    second = data.rfind(b"PK\x01\x02")
    compressed = struct.unpack_from("<L", data, second + 20)[0]
    data = _patched(data, second + 20, "<L", compressed + 30)
    return _patched(data, data.rfind(b"PK\x03\x04") + 18, "<L", compressed + 30)


def end_record_claiming_a_split_archive() -> bytes:
    data = build(two_members())
    return _patched(data, data.rfind(b"PK\x05\x06") + 4, "<2H", 1, 1)


def zip64_locator_claiming_several_disks() -> bytes:
    data = build(two_members(), zip64=True)
    return _patched(data, data.rfind(b"PK\x06\x07") + 16, "<L", 3)


def entry_needing_a_zip_version_nobody_has() -> bytes:
    data = build(two_members())
    return _patched(data, data.rfind(b"PK\x01\x02") + 6, "<H", 99)


BROKEN = [
    end_record_claiming_a_split_archive,
    zip64_locator_claiming_several_disks,
    entry_needing_a_zip_version_nobody_has,
    zip64_locator_outside_the_file,
    zip64_record_directory_offset_past_the_end,
    zip64_record_size_field_wrong,
    zip64_extra_field_longer_than_its_block,
    zip64_extra_field_too_short_for_a_saturated_size,
    unknown_extra_field_overrunning_its_block,
    central_directory_truncated_with_its_end_record_kept,
    central_directory_truncated_with_the_file,
    comment_claiming_a_huge_length,
    more_entries_in_the_directory_than_counted,
    central_entry_pointing_into_the_central_directory,
    member_data_running_into_the_central_directory,
]


@pytest.mark.parametrize("make", BROKEN, ids=[make.__name__ for make in BROKEN])
def test_broken_directory_records_get_one_verdict(make: Callable[[], bytes]) -> None:
    assert_one_verdict(make())


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "zipcrypto"])
@pytest.mark.parametrize("zip64", [False, True], ids=["zip32", "zip64"])
def test_fuzzed_archives_never_get_two_verdicts(encrypted: bool, zip64: bool) -> None:
    """Random bytes changed in an honest archive: whatever inspect_zip reads cleanly, the
    extraction's own reader (pyzipper and the layout checks) accepts too, and the other way
    round: a structural refusal always matches an unreadable verdict."""
    original = build(two_members(encrypted), zip64=zip64)
    rng = random.Random(6)
    for _ in range(700):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        report = inspect_zip(bytes(data))
        clean = report.reason == "" and report.verdict is not ZipVerdict.NOT_ZIP
        try:
            entries = read_directory(bytes(data), UNLIMITED, Budget(UNLIMITED.max_members, 2**40))
        except ExtractRefused as refused:
            assert not clean, (refused.reason, bytes(data).hex())
            continue
        assert clean and len(entries) == len(report.members)


# --- bombs ---------------------------------------------------------------------------------------


def stored_block(data: bytes) -> bytes:
    """A non-final deflate stored block holding data, starting on a byte boundary."""
    return struct.pack("<BHH", 0, len(data), len(data) ^ 0xFFFF) + data


def overlapping_bomb(files: int, kernel: bytes) -> bytes:
    """Fifield's quoted-overlap bomb: member i's deflate stream quotes member i+1's local header
    in a stored block and then continues into member i+1's data, down to one shared kernel."""
    kernel_stream = deflated(kernel)
    names = [b"%04d.txt" % index for index in range(files)]
    headers: list[bytes] = [b""] * files
    streams: list[bytes] = [b""] * files
    contents: list[bytes] = [b""] * files
    stream, content = kernel_stream, kernel
    for index in range(files - 1, -1, -1):
        headers[index] = _LOCAL.pack(
            b"PK\x03\x04", 20, 0, 8, 0, 0x21, zlib.crc32(content), len(stream), len(content),
            len(names[index]), 0,
        ) + names[index]
        streams[index], contents[index] = stream, content
        stream = stored_block(headers[index]) + stream
        content = headers[index] + content
    body = headers[0] + streams[0]
    directory = bytearray()
    offset = 0
    for index in range(files):
        directory += _CENTRAL.pack(
            b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, zlib.crc32(contents[index]), len(streams[index]),
            len(contents[index]), len(names[index]), 0, 0, 0, 0, 0, offset,
        ) + names[index]
        offset += len(headers[index]) + len(stored_block(b""))
    end = _EOCD.pack(b"PK\x05\x06", 0, 0, files, files, len(directory), len(body), 0)
    return bytes(body + directory + end)


def test_overlapping_entry_bomb_is_a_real_bomb() -> None:
    data = overlapping_bomb(files=40, kernel=b"\0" * (900 * 1024))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert sum(info.file_size for info in infos) > 35 * 1024 * 1024
        assert len(data) < 8192  # ratio over 4000
        first = infos[0]
    inflated = zlib.decompressobj(-15).decompress(data[30 + len(first.filename) :][: first.compress_size])
    assert zlib.crc32(inflated) == first.CRC  # member 0 really inflates to all of it


def test_overlapping_entry_bomb_is_refused_before_inflating_anything() -> None:
    data = overlapping_bomb(files=40, kernel=b"\0" * (900 * 1024))
    report = inspect_zip(data)
    assert report.verdict is ZipVerdict.CORRUPT_ZIP and "overlap" in report.reason
    peak, seconds = measured(lambda: extract_members(data, PASSWORD, LIMITS))
    assert refusal(data) == "overlapping entries (zip bomb)"
    assert peak < 512 * 1024 and seconds < 2  # the kernel alone would be 900 KiB
    assert prove_password(data, PASSWORD) is False


def test_entries_all_pointing_at_one_local_header_are_refused_as_overlapping() -> None:
    kernel = Member(b"k.txt", b"\0" * (900 * 1024))
    data = build([kernel])  # the honest one-member archive first
    assert extract_members(data, "", LIMITS).files[0].size == 900 * 1024
    layout = Layout()
    body = build([kernel], layout=layout)[: layout.directory_start]
    directory = b"".join(
        _CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, zlib.crc32(kernel.content),
                      len(kernel.stored()), len(kernel.content), 5, 0, 0, 0, 0, 0, 0) + b"k.txt"
        for _ in range(30)
    )
    bomb = body + directory + _EOCD.pack(b"PK\x05\x06", 0, 0, 30, 30, len(directory), len(body), 0)
    assert inspect_zip(bomb).verdict is ZipVerdict.CORRUPT_ZIP
    peak, _ = measured(lambda: extract_members(bomb, "", LIMITS))
    assert refusal(bomb) == "overlapping entries (zip bomb)"
    assert peak < 512 * 1024


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def nested(levels: int, fan_out: int, bottom: bytes) -> bytes:
    """42.zip's shape: each level a ZIP of fan_out copies of the level below."""
    data = bottom
    for level in range(levels):
        data = zip_of({f"level{level}-{index}.zip": data for index in range(fan_out)})
    return data


def test_42_zip_style_nesting_is_refused_before_its_payload_is_inflated() -> None:
    payload = b"\0" * (8 * 1024 * 1024)  # 8 MiB per leaf, 16**6 leaves: about 128 TiB in all
    bottom = zip_of({f"{index}.bin": payload for index in range(16)})
    data = nested(5, 16, bottom)
    assert len(data) < 200 * 1024
    for limits in (LIMITS, ExtractLimits(max_depth=10)):
        peak, seconds = measured(lambda limits=limits: extract_members(data, "", limits))
        assert peak < 4 * 1024 * 1024 and seconds < 5  # a single leaf is 8 MiB
    assert refusal(data) == "nested too deep"
    # with room for every level, the ratio cap stops the leaves before they are inflated
    assert refusal(data, ExtractLimits(max_depth=10)) == "compression ratio over limit (zip bomb)"


def test_nesting_within_max_depth_is_extracted_with_prefixed_names() -> None:
    data = nested(2, 2, b"leaf\n")
    names = [f.display_name for f in extract_members(data, "", LIMITS).files]
    assert names == [f"level1-{a}.zip/level0-{b}.zip" for a in range(2) for b in range(2)]
    assert len(extract_members(nested(3, 2, b"leaf\n"), "", LIMITS).files) == 8  # max_depth 2
    assert refusal(nested(4, 2, b"leaf\n")) == "nested too deep"


def test_entry_count_cap_is_checked_on_the_directory_alone() -> None:
    data = build([Member(b"%d" % index, b"x", method=0) for index in range(1001)])
    assert refusal(data) == "too many members"
    assert refusal(data, ExtractLimits(max_members=10)) == "too many members"
    assert len(extract_members(data, "", ExtractLimits(max_members=1001)).files) == 1001
    assert inspect_zip(data, max_members=1000).verdict is ZipVerdict.CORRUPT_ZIP


def test_nested_entries_count_against_the_same_cap() -> None:
    data = zip_of({f"{index}.zip": zip_of({f"{n}.txt": b"x" for n in range(20)}) for index in range(5)})
    assert refusal(data, ExtractLimits(max_members=50)) == "too many members"
    assert len(extract_members(data, "", ExtractLimits(max_members=200)).files) == 100


def test_total_size_cap_is_checked_before_inflating() -> None:
    data = build([Member(b"%d.bin" % index, b"\0" * (900 * 1024)) for index in range(4)])
    limits = ExtractLimits(max_total_bytes=3 * 1024 * 1024)
    peak, _ = measured(lambda: extract_members(data, "", limits))
    assert refusal(data, limits) == "total size over limit"
    assert peak < 512 * 1024


def test_ratio_cap_is_checked_before_inflating() -> None:
    data = build([Member(b"zeros.bin", b"\0" * (16 * 1024 * 1024))])
    peak, _ = measured(lambda: extract_members(data, "", LIMITS))
    assert refusal(data) == "compression ratio over limit (zip bomb)"
    assert peak < 1024 * 1024
    assert inspect_zip(data).verdict is ZipVerdict.PLAIN_ZIP  # classification is not refusal


def test_declared_size_lie_stops_inflating_at_the_declared_size() -> None:
    member = Member(b"liar.bin", b"\0" * (16 * 1024 * 1024), declared_size=1000)
    data = build([member])
    peak, _ = measured(lambda: extract_members(data, "", LIMITS))
    assert refusal(data) == "declared size exceeded (zip bomb)"
    assert peak < 1024 * 1024


# --- names never become paths --------------------------------------------------------------------


HOSTILE_NAMES = {
    b"../../etc/passwd": "etc/passwd",
    b"/abs/path.txt": "abs/path.txt",
    b"C:\\x.txt": "x.txt",
    b"a/../../b.txt": "a/b.txt",
    b"nul\x00.txt": "nul.txt",
    b"..\\..\\win.ini": "win.ini",
    b"dir/./.hidden": "dir/hidden",
    b"\xe2\x80\xaeexe.txt": "exe.txt",
    b"line\r\nbreak.txt": "linebreak.txt",
}


@pytest.mark.parametrize("raw", HOSTILE_NAMES, ids=[repr(n)[2:-1] for n in HOSTILE_NAMES])
def test_hostile_member_names_come_back_as_display_names_only(raw: bytes) -> None:
    data = build([Member(raw)])
    member = inspect_zip(data).members[0]
    assert "\0" not in member.name and "\u202e" not in member.name and "\n" not in member.name
    shown = extract_members(data, "", LIMITS).files[0].display_name
    assert shown == HOSTILE_NAMES[raw]
    assert not shown.startswith(("/", "\\")) and ".." not in shown.split("/")


def test_extracting_hostile_names_writes_nothing_anywhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = build([Member(raw) for raw in HOSTILE_NAMES])
    assert len(extract_members(data, "", LIMITS).files) == len(HOSTILE_NAMES)
    assert list(tmp_path.rglob("*")) == []


_FILE_SYSTEM_CALLS = {"open", "extract", "extractall", "write", "write_bytes", "write_text",
                      "mkdir", "makedirs", "rename", "replace", "unlink"}
_FILE_SYSTEM_MODULES = {"os", "shutil", "pathlib", "tempfile"}


@pytest.mark.parametrize("module", ["containers/zipinspect.py", "unlock"])
def test_zip_reading_code_has_no_file_system_calls(module: str) -> None:
    """Static proof: the code that reads archives cannot open, write or create a path."""
    target = GATEWAY / module
    sources = [target] if target.is_file() else sorted(target.glob("*.py"))
    sources = [s for s in sources if s.name in ("zipinspect.py", "extract.py") or s.stem.startswith("zip")]
    assert sources
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "") or ""]
                assert not {n.split(".")[0] for n in names} & _FILE_SYSTEM_MODULES, source
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                assert called not in _FILE_SYSTEM_CALLS, (source.name, node.lineno, called)
