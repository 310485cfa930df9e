"""inspect_zip: verdicts from real archiver output and from hand-built hostile ZIPs."""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import pyzipper

from gateway.model import ZipVerdict
from gateway.containers.zipinspect import inspect_zip

CORPUS_FILES = Path(__file__).resolve().parents[1] / "corpus" / "files"


@dataclass
class Entry:
    """One member of a hand-built ZIP; claimed_* override what the headers say."""

    name: bytes
    data: bytes = b""
    flags: int = 0
    method: int = 0
    extra: bytes = b""
    local_flags: int | None = None
    claimed_compressed: int | None = None
    claimed_uncompressed: int | None = None


def build_zip(
    entries: list[Entry], *, prefix: bytes = b"", zip64: bool = False, comment: bytes = b""
) -> bytes:
    """Bytes of a ZIP laid out as APPNOTE describes, offsets counted from the start of the archive."""
    body = bytearray()
    directory = bytearray()
    for entry in entries:
        offset = len(body)
        compressed = _claimed(entry.claimed_compressed, len(entry.data))
        uncompressed = _claimed(entry.claimed_uncompressed, len(entry.data))
        crc = zlib.crc32(entry.data)
        local_flags = entry.flags if entry.local_flags is None else entry.local_flags
        body += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, local_flags, entry.method, 0, 0x21, crc,
            compressed, uncompressed, len(entry.name), len(entry.extra),
        )
        body += entry.name + entry.extra + entry.data
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 0x031E, 20, entry.flags, entry.method, 0, 0x21, crc,
            compressed, uncompressed, len(entry.name), len(entry.extra), 0, 0, 0, 0, offset,
        )
        directory += entry.name + entry.extra
    return prefix + bytes(body) + bytes(directory) + _end_records(len(entries), body, directory, zip64, comment)


def _claimed(claimed: int | None, actual: int) -> int:
    return actual if claimed is None else claimed


def _end_records(count: int, body: bytes, directory: bytes, zip64: bool, comment: bytes) -> bytes:
    eocd = struct.Struct("<4s4H2LH")
    if not zip64:
        return eocd.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), len(body), len(comment)) + comment
    record_offset = len(body) + len(directory)
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory), len(body)
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, record_offset, 1)
    saturated = eocd.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
    return record + locator + saturated + comment


def extra_field(header_id: int, data: bytes) -> bytes:
    return struct.pack("<2H", header_id, len(data)) + data


def unicode_path_field(header_name: bytes, unicode_name: str) -> bytes:
    """Info-ZIP 0x7075: version 1, CRC-32 of the header name it replaces, the UTF-8 name."""
    crc = struct.pack("<L", zlib.crc32(header_name))
    return extra_field(0x7075, b"\x01" + crc + unicode_name.encode())


def corpus(name: str) -> bytes:
    return (CORPUS_FILES / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "verdict", "encryption"),
    [
        ("01_aes256_7zip_ja.zip", ZipVerdict.ENCRYPTED_ZIP, {"aes"}),
        ("02_zipcrypto_infozip_ascii.zip", ZipVerdict.ENCRYPTED_ZIP, {"zipcrypto"}),
        ("10_eicar_zipcrypto.zip", ZipVerdict.ENCRYPTED_ZIP, {"zipcrypto"}),
        ("04_unencrypted_7zip.zip", ZipVerdict.PLAIN_ZIP, {"none"}),
        ("12a_plain.pdf", ZipVerdict.NOT_ZIP, set()),
    ],
)
def test_corpus_files_get_their_verdict_and_encryption_kind(
    name: str, verdict: ZipVerdict, encryption: set[str]
) -> None:
    report = inspect_zip(corpus(name))
    assert report.verdict is verdict
    assert {member.encryption for member in report.members} == encryption
    assert all(member.encrypted == (member.encryption != "none") for member in report.members)


def test_aes_members_keep_method_99_and_sizes() -> None:
    report = inspect_zip(corpus("01_aes256_7zip_ja.zip"))
    assert [(m.method, m.compressed_size, m.uncompressed_size) for m in report.members] == [
        (99, 4051, 6920),
        (99, 2395, 3166),
    ]


def test_japanese_utf8_member_names_of_7zip_archive_decode() -> None:
    names = [member.name for member in inspect_zip(corpus("01_aes256_7zip_ja.zip")).members]
    assert names == ["仕様書_庁内ネットワーク更新.pdf", "見積書_2026年11月.xlsx"]


def test_cp932_member_names_without_utf8_flag_decode_as_japanese() -> None:
    name = "請求書_2026年11月.pdf".encode("cp932")
    report = inspect_zip(build_zip([Entry(name, b"%PDF-1.4")]))
    assert report.verdict is ZipVerdict.PLAIN_ZIP
    assert report.members[0].name == "請求書_2026年11月.pdf"


def test_names_invalid_in_cp932_fall_back_to_cp437() -> None:
    report = inspect_zip(build_zip([Entry(b"caf\x82 menu.txt", b"x")]))
    assert report.members[0].name == "caf\u00e9 menu.txt"


def test_utf8_names_without_the_flag_decode_as_utf8_as_macos_writes_them() -> None:
    data = build_zip([Entry("議事録_第3回.pdf".encode())])
    assert inspect_zip(data).members[0].name == "議事録_第3回.pdf"


def test_info_zip_unicode_path_field_wins_when_its_crc_matches() -> None:
    raw = b"report?.txt"
    report = inspect_zip(build_zip([Entry(raw, b"x", extra=unicode_path_field(raw, "報告書.txt"))]))
    assert report.members[0].name == "報告書.txt"


def test_info_zip_unicode_path_field_is_ignored_when_its_crc_is_stale() -> None:
    raw = b"report.txt"
    stale = unicode_path_field(b"other.txt", "報告書.txt")
    assert inspect_zip(build_zip([Entry(raw, b"x", extra=stale)])).members[0].name == "report.txt"


def test_control_and_bidi_characters_are_removed_from_member_names() -> None:
    name = "invoice\u202etxt.exe\r\n".encode()
    report = inspect_zip(build_zip([Entry(name, b"x", flags=0x0800)]))
    assert report.members[0].name == "invoicetxt.exe"


def test_aes_zip_written_by_pyzipper_is_encrypted_aes() -> None:
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(b"Qm7#vK2p9L")
        archive.writestr("見積書.xlsx", b"spreadsheet" * 100)
    report = inspect_zip(buffer.getvalue())
    assert report.verdict is ZipVerdict.ENCRYPTED_ZIP
    assert [(m.name, m.encryption, m.method) for m in report.members] == [("見積書.xlsx", "aes", 99)]


def test_plain_zip_written_by_zipfile_is_plain() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", b"hello" * 100)
        archive.writestr("b/c.txt", b"")
    report = inspect_zip(buffer.getvalue())
    assert report.verdict is ZipVerdict.PLAIN_ZIP
    assert [m.name for m in report.members] == ["a.txt", "b/c.txt"]


def test_aes_extra_field_marks_member_as_aes_whatever_its_method() -> None:
    aes_extra = extra_field(0x9901, struct.pack("<H2sBH", 2, b"AE", 3, 8))
    entry = Entry(b"a.txt", b"x" * 30, flags=0x0001, method=8, extra=aes_extra)
    report = inspect_zip(build_zip([entry]))
    assert (report.verdict, report.members[0].encryption) == (ZipVerdict.ENCRYPTED_ZIP, "aes")


def test_strong_encryption_flag_counts_as_encrypted() -> None:
    report = inspect_zip(build_zip([Entry(b"a.txt", b"x" * 30, flags=0x0041, method=8)]))
    assert (report.verdict, report.members[0].encryption) == (ZipVerdict.ENCRYPTED_ZIP, "strong")


def test_one_encrypted_member_among_plain_ones_makes_the_zip_encrypted() -> None:
    entries = [Entry(b"readme.txt", b"plain"), Entry(b"secret.xlsx", b"x" * 40, flags=0x0001, method=8)]
    report = inspect_zip(build_zip(entries))
    assert report.verdict is ZipVerdict.ENCRYPTED_ZIP
    assert [m.encrypted for m in report.members] == [False, True]


def test_encryption_flag_only_in_local_header_is_seen() -> None:
    report = inspect_zip(build_zip([Entry(b"a.txt", b"x" * 30, flags=0, local_flags=0x0001)]))
    assert report.verdict is ZipVerdict.ENCRYPTED_ZIP


def test_prepended_bytes_do_not_hide_an_encrypted_zip() -> None:
    data = build_zip([Entry(b"a.txt", b"x" * 30, flags=0x0001, method=8)], prefix=b"MZ" + b"\0" * 500)
    assert inspect_zip(data).verdict is ZipVerdict.ENCRYPTED_ZIP


def test_encrypted_zip_concatenated_before_a_plain_one_is_found() -> None:
    hidden = build_zip([Entry(b"secret.xlsx", b"x" * 40, flags=0x0001, method=8)])
    visible = build_zip([Entry(b"readme.txt", b"nothing to see")])
    report = inspect_zip(hidden + visible)
    assert report.verdict is ZipVerdict.ENCRYPTED_ZIP
    assert [m.name for m in report.members] == ["readme.txt", "secret.xlsx"]


def test_plain_zip_concatenated_before_a_plain_one_stays_plain() -> None:
    first = build_zip([Entry(b"a.txt", b"a")])
    report = inspect_zip(first + build_zip([Entry(b"b.txt", b"b")]))
    assert report.verdict is ZipVerdict.PLAIN_ZIP


def test_archive_comment_is_allowed() -> None:
    data = build_zip([Entry(b"a.txt", b"x")], comment="コメント PK".encode())
    assert inspect_zip(data).verdict is ZipVerdict.PLAIN_ZIP


def test_zip64_archive_is_read_through_its_locator() -> None:
    data = build_zip([Entry(b"a.txt", b"x"), Entry(b"b.txt", b"y" * 20, flags=0x0001)], zip64=True)
    report = inspect_zip(data)
    assert report.verdict is ZipVerdict.ENCRYPTED_ZIP
    assert [m.name for m in report.members] == ["a.txt", "b.txt"]


def test_empty_archive_is_a_plain_zip_without_members() -> None:
    report = inspect_zip(build_zip([]))
    assert (report.verdict, report.members) == (ZipVerdict.PLAIN_ZIP, ())


def test_empty_file_is_not_a_zip() -> None:
    assert inspect_zip(b"").verdict is ZipVerdict.NOT_ZIP


def test_pdf_with_a_stray_eocd_signature_is_not_a_zip() -> None:
    data = corpus("12a_plain.pdf") + b"\nPK\x05\x06" + b"\x00" * 30 + b"\n%%EOF\n"
    assert inspect_zip(data).verdict is ZipVerdict.NOT_ZIP


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("01_aes256_7zip_ja.zip", ZipVerdict.ENCRYPTED_ZIP),
        ("02_zipcrypto_infozip_ascii.zip", ZipVerdict.ENCRYPTED_ZIP),
        ("04_unencrypted_7zip.zip", ZipVerdict.CORRUPT_ZIP),
    ],
)
def test_truncated_zip_is_encrypted_if_its_local_headers_say_so_else_corrupt(
    name: str, verdict: ZipVerdict
) -> None:
    data = corpus(name)
    report = inspect_zip(data[: len(data) // 2])
    assert report.verdict is verdict
    assert "no end of central directory" in report.reason


def test_central_directory_pointing_past_the_end_is_corrupt() -> None:
    data = bytearray(build_zip([Entry(b"a.txt", b"x")]))
    struct.pack_into("<L", data, len(data) - 6, len(data) + 1000)  # EOCD: central directory offset
    report = inspect_zip(bytes(data))
    assert report.verdict is ZipVerdict.CORRUPT_ZIP
    assert report.reason


def test_central_directory_larger_than_the_file_is_corrupt() -> None:
    data = bytearray(build_zip([Entry(b"a.txt", b"x")]))
    struct.pack_into("<L", data, len(data) - 10, 0x7FFFFFFF)  # EOCD: central directory size
    assert inspect_zip(bytes(data)).verdict is ZipVerdict.CORRUPT_ZIP


def test_local_header_missing_where_the_directory_points_is_corrupt() -> None:
    data = bytearray(build_zip([Entry(b"a.txt", b"x"), Entry(b"b.txt", b"y")]))
    second = data.find(b"PK\x03\x04", 4)
    data[second : second + 4] = b"XXXX"
    report = inspect_zip(bytes(data))
    assert report.verdict is ZipVerdict.CORRUPT_ZIP
    assert "local header" in report.reason


def test_member_claiming_4_gib_of_compressed_data_is_corrupt_without_allocating() -> None:
    entry = Entry(b"big.bin", b"x" * 10, claimed_compressed=0xFFFFFFFE, claimed_uncompressed=0xFFFFFFFE)
    data = build_zip([entry])
    tracemalloc.start()
    report = inspect_zip(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.verdict is ZipVerdict.CORRUPT_ZIP
    assert peak < 1_000_000


def test_claimed_uncompressed_size_is_only_reported() -> None:
    zip64_sizes = extra_field(0x0001, struct.pack("<Q", 5 * 2**30))
    entry = Entry(b"bomb.bin", b"x" * 10, extra=zip64_sizes, claimed_uncompressed=0xFFFFFFFF)
    report = inspect_zip(build_zip([entry]))
    assert report.verdict is ZipVerdict.PLAIN_ZIP
    assert report.members[0].uncompressed_size == 5 * 2**30


def test_highly_compressed_member_is_never_decompressed() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    deflated = b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()
    data = build_zip([Entry(b"zeros.bin", deflated, method=8, claimed_uncompressed=64 << 20)])
    tracemalloc.start()
    report = inspect_zip(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.verdict is ZipVerdict.PLAIN_ZIP
    assert peak < 1_000_000  # 64 MiB would have been allocated had anything been inflated


def test_more_entries_than_max_members_is_corrupt() -> None:
    entries = [Entry(b"f%d" % index) for index in range(70_000)]
    report = inspect_zip(build_zip(entries, zip64=True))
    assert report.verdict is ZipVerdict.CORRUPT_ZIP
    assert "too many entries" in report.reason


def test_max_members_is_a_parameter() -> None:
    data = build_zip([Entry(b"a"), Entry(b"b"), Entry(b"c")])
    assert inspect_zip(data, max_members=2).verdict is ZipVerdict.CORRUPT_ZIP
    assert inspect_zip(data, max_members=3).verdict is ZipVerdict.PLAIN_ZIP


def test_65535_tiny_entries_are_read_quickly() -> None:
    data = build_zip([Entry(b"f%d" % index, b"x") for index in range(65_535)], zip64=True)
    started = time.perf_counter()
    report = inspect_zip(data)
    assert time.perf_counter() - started < 60  # hang guard, not a speed target
    assert report.verdict is ZipVerdict.PLAIN_ZIP
    assert len(report.members) == 65_535


def test_many_entries_sharing_one_header_with_a_huge_extra_block_are_read_quickly() -> None:
    empty_fields = struct.pack("<2H", 0xCAFE, 0) * 16_000
    entries = [Entry(b"f%d" % index) for index in range(65_535)]
    entries[0].extra = empty_fields
    data = bytearray(build_zip(entries, zip64=True))
    directory = data.find(b"PK\x01\x02")
    for _ in entries:  # point every central entry at the first local header and its extra block
        name_length, extra_length = struct.unpack_from("<2H", data, directory + 28)
        struct.pack_into("<L", data, directory + 42, 0)
        directory += 46 + name_length + extra_length
    started = time.perf_counter()
    report = inspect_zip(bytes(data))
    assert time.perf_counter() - started < 60  # hang guard, not a speed target
    assert report.verdict is ZipVerdict.CORRUPT_ZIP  # every entry but one names another file


def test_entry_count_larger_than_the_directory_can_hold_is_corrupt() -> None:
    data = bytearray(build_zip([Entry(b"a.txt", b"x")]))
    struct.pack_into("<2H", data, len(data) - 14, 60_000, 60_000)  # EOCD: entry counts
    report = inspect_zip(bytes(data))
    assert report.verdict is ZipVerdict.CORRUPT_ZIP


def test_random_bytes_after_a_local_header_signature_are_corrupt() -> None:
    noise = random.Random(20261118).randbytes(4096)
    report = inspect_zip(b"PK\x03\x04" + noise)
    assert report.verdict is ZipVerdict.CORRUPT_ZIP


@pytest.mark.parametrize(
    "data", [b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"PK\x05\x06" + b"\0" * 17]
)
def test_bare_signatures_are_corrupt(data: bytes) -> None:
    assert inspect_zip(data).verdict is ZipVerdict.CORRUPT_ZIP


def test_broken_zip64_locator_is_corrupt() -> None:
    data = bytearray(build_zip([Entry(b"a.txt", b"x")], zip64=True))
    record = data.rfind(b"PK\x06\x06")
    data[record : record + 4] = b"XXXX"
    struct.pack_into("<Q", data, data.rfind(b"PK\x06\x07") + 8, 2**63)
    report = inspect_zip(bytes(data))
    assert report.verdict is ZipVerdict.CORRUPT_ZIP
    assert "ZIP64" in report.reason


def test_zip64_record_claiming_to_overrun_its_locator_is_corrupt() -> None:
    data = bytearray(build_zip([Entry(b"a.txt", b"x")], zip64=True))
    struct.pack_into("<Q", data, data.rfind(b"PK\x06\x06") + 4, 2**40)
    assert inspect_zip(bytes(data)).verdict is ZipVerdict.CORRUPT_ZIP


def test_damaged_copies_of_real_zips_always_get_a_verdict() -> None:
    rng = random.Random(7)
    names = ("01_aes256_7zip_ja.zip", "04_unencrypted_7zip.zip", "10_eicar_zipcrypto.zip")
    originals = [corpus(name) for name in names]
    for _ in range(1500):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        report = inspect_zip(bytes(data))
        assert report.verdict in set(ZipVerdict)
        assert report.verdict is not ZipVerdict.CORRUPT_ZIP or report.reason
