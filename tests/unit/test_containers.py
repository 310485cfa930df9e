"""inspect_container and nested_zip_names: real 7-Zip, Office and qpdf output; hand-built, hostile bytes."""

from __future__ import annotations

import io
import random
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import pyzipper

from gateway.containers import inspect_container, nested_zip_names
from gateway.model import ContainerReport, ZipVerdict
from gateway.containers.zipinspect import inspect_zip

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "containers"
CORPUS_FILES = Path(__file__).resolve().parents[1] / "corpus" / "files"
PLAIN_PDF = (CORPUS_FILES / "12a_plain.pdf").read_bytes()
CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.mark.parametrize(
    ("name", "kind", "encrypted", "reason"),
    [
        ("plain.7z", "7z", False, "without an AES coder"),
        ("encrypted.7z", "7z", True, "AES coder on the file data"),
        ("encrypted_header.7z", "7z", True, "file names hidden"),
        ("plain_packed_header.7z", "7z", False, "without an AES coder"),
        ("encrypted_packed_header.7z", "7z", True, "AES coder on the file data"),
        ("encrypted.docx", "office", True, "EncryptionInfo"),
        ("encrypted.pdf", "pdf", True, "/Encrypt"),
        ("encrypted_xref_stream.pdf", "pdf", True, "/Encrypt"),
    ],
)
def test_fixture_made_by_the_real_tool_gets_its_verdict(name, kind, encrypted, reason) -> None:
    report = inspect_container(fixture(name))
    assert (report.kind, report.encrypted) == (kind, encrypted)
    assert reason in report.reason


def test_plain_pdf_from_the_corpus_is_not_encrypted() -> None:
    assert inspect_container(PLAIN_PDF) == ContainerReport("pdf", False, "PDF without an /Encrypt entry")


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"PK\x03\x04" + bytes(100), "見積書".encode("cp932"), bytes(range(256)) * 40],
)
def test_other_bytes_are_no_container(data: bytes) -> None:
    assert inspect_container(data) == ContainerReport("none", False, "")


# --- 7z: hand-built headers -------------------------------------------------------------


def seven_zip(header: bytes, packed: bytes = b"") -> bytes:
    """A 7z archive: start header with correct CRCs, then packed streams, then the header."""
    tail = struct.pack("<QQL", len(packed), len(header), zlib.crc32(header))
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<L", zlib.crc32(tail)) + tail + packed + header


def header_with_coder(method: bytes) -> bytes:
    """kHeader → MainStreamsInfo: one pack stream, one folder with one coder of that method."""
    pack_info = b"\x06\x00\x01\x09\x10\x00"
    unpack_info = b"\x07\x0b\x01\x00\x01" + bytes([len(method)]) + method + b"\x0c\x10\x00"
    return b"\x01\x04" + pack_info + unpack_info + b"\x00\x00"


def test_hand_built_header_with_an_aes_coder_is_encrypted() -> None:
    assert inspect_container(seven_zip(header_with_coder(b"\x06\xf1\x07\x01"), bytes(16))).encrypted
    assert not inspect_container(seven_zip(header_with_coder(b"\x03\x01\x01"), bytes(16))).encrypted


def test_aes_coder_seen_before_the_header_breaks_off_still_counts() -> None:
    header = header_with_coder(b"\x06\xf1\x07\x01")
    cut = header[: header.index(b"\x0c")]  # ends right after the folder
    report = inspect_container(seven_zip(cut, bytes(16)))
    assert report.encrypted and report.kind == "7z"


def test_empty_7z_archive_is_plain() -> None:
    assert inspect_container(seven_zip(b"")) == ContainerReport("7z", False, "empty 7z archive")


def test_encoded_header_that_decodes_to_itself_stops_after_a_few_layers() -> None:
    # the Copy-coded header stream is the encoded header itself: would loop forever
    size = 23
    pack_info = b"\x06\x00\x01\x09" + bytes([size]) + b"\x00"
    copy_folder = b"\x07\x0b\x01\x00\x01\x01\x00\x0c" + bytes([size]) + b"\x00"
    encoded = b"\x17" + pack_info + copy_folder
    encoded += bytes(size - len(encoded))
    assert len(encoded) == size
    report = inspect_container(seven_zip(encoded))
    assert report == ContainerReport("7z", False, "unreadable: 7z header encoded too many times")


def test_lzma_header_claiming_a_huge_dictionary_is_decoded_within_bounds() -> None:
    # 4 GiB claimed: the decoder must not allocate it
    props = b"\x5d" + struct.pack("<L", 0xFFFFFFFF)
    encoded = b"\x17\x06\x00\x01\x09\x20\x00\x07\x0b\x01\x00\x01\x23\x03\x01\x01\x05" + props
    encoded += b"\x0c\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00"
    started = time.perf_counter()
    report = inspect_container(seven_zip(encoded, bytes(range(32))))
    assert time.perf_counter() - started < 2
    assert report.kind == "7z" and not report.encrypted and report.reason.startswith("unreadable")


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"\x01\x04\x06\x00\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "count larger than the header"),
        (b"\x01\x04\x07\x0b\x01\x00\x00", "0 coders"),
        (b"\x01\x04\x07\x0b\x01\x01\x00", "outside the header"),
        (b"\x01\x04\x07\x0b\x01\x00\x01\xc1\x00", "reserved flags"),
        (b"\x01\x04\x07\x0b\x01\x00\x01\x11\x00\x00\x01", "0 streams"),
        (b"\x17\x06\x00\x01\x09\x7f\x00\x07\x0b\x01\x00\x01\x01\x00\x0c\x05\x00", "past the end"),
        (b"\x17\x06\x00\x01\x09\x01\x00\x07\x0b\x01\x00\x01\x01\x04\x0c\x05\x00", "method 04"),
        (b"\x05\x00", "lacks property 0x01"),
    ],
)
def test_hostile_7z_header_is_unreadable_not_an_exception(header: bytes, problem: str) -> None:
    report = inspect_container(seven_zip(header, b"\x00"))
    assert report.kind == "7z" and not report.encrypted
    assert report.reason.startswith("unreadable") and problem in report.reason


def test_7z_with_a_wrong_start_header_crc_is_unreadable() -> None:
    data = bytearray(fixture("encrypted.7z"))
    data[12] ^= 0xFF
    assert inspect_container(bytes(data)).reason == "unreadable: 7z start header CRC mismatch"


def test_7z_header_bytes_mutated_at_random_never_raise() -> None:
    rng = random.Random(7)
    for name in ("encrypted.7z", "plain_packed_header.7z", "encrypted_header.7z"):
        original = fixture(name)
        next_offset, next_size = struct.unpack_from("<QQ", original, 12)
        start = 32 + next_offset
        for _ in range(300):
            header = bytearray(original[start : start + next_size])
            for _ in range(rng.randint(1, 4)):
                header[rng.randrange(len(header))] = rng.randrange(256)
            report = inspect_container(seven_zip(bytes(header), original[32:start]))
            assert report.kind == "7z"


# --- Office: hand-built compound files ---------------------------------------------------

SECTOR = 512
END_OF_CHAIN, FAT_SECTOR, NO_STREAM = 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def compound_file(streams: dict[str, bytes]) -> bytes:
    """A version 3 compound file ([MS-CFB]) holding these streams; small ones in the mini stream."""
    small = {name: data for name, data in streams.items() if len(data) < 4096}
    large = {name: data for name, data in streams.items() if len(data) >= 4096}
    mini_stream, mini_fat, mini_starts = b"", [], {}
    for name, data in small.items():
        mini_starts[name] = len(mini_stream) // 64
        count = max(1, -(-len(data) // 64))
        mini_fat += [mini_starts[name] + i + 1 for i in range(count - 1)] + [END_OF_CHAIN]
        mini_stream += data.ljust(count * 64, b"\x00")
    entry_count = 1 + len(streams)
    runs = [  # (what, sector count) in file order after the FAT
        ("directory", -(-entry_count * 128 // SECTOR)),
        ("minifat", -(-len(mini_fat) * 4 // SECTOR)),
        ("ministream", -(-len(mini_stream) // SECTOR)),
    ] + [(name, -(-len(data) // SECTOR)) for name, data in large.items()]
    body_sectors = sum(count for _, count in runs)
    fat_sectors = 1
    while fat_sectors * 128 < fat_sectors + body_sectors:
        fat_sectors += 1
    fat = [FAT_SECTOR] * fat_sectors
    starts: dict[str, int] = {}
    for what, count in runs:
        starts[what] = len(fat) if count else END_OF_CHAIN
        fat += [len(fat) + 1 for _ in range(count - 1)] + ([END_OF_CHAIN] if count else [])
    fat += [0xFFFFFFFF] * (fat_sectors * 128 - len(fat))

    def entry(name: str, kind: int, start: int, size: int, child: int, right: int) -> bytes:
        encoded = name.encode("utf-16-le") + b"\x00\x00"
        return (
            encoded.ljust(64, b"\x00")
            + struct.pack("<HBB3L", len(encoded), kind, 1, NO_STREAM, right, child)
            + bytes(16 + 4 + 16)
            + struct.pack("<LQ", start, size)
        )

    first_child = 1 if streams else NO_STREAM
    directory = entry("Root Entry", 5, starts["ministream"], len(mini_stream), first_child, NO_STREAM)
    for index, (name, data) in enumerate(streams.items(), start=1):
        start = mini_starts[name] if name in small else starts[name]
        right = index + 1 if index < len(streams) else NO_STREAM  # a chain of right siblings
        directory += entry(name, 2, start, len(data), NO_STREAM, right)
    contents = {
        "directory": directory,
        "minifat": struct.pack(f"<{len(mini_fat)}L", *mini_fat),
        "ministream": mini_stream,
        **large,
    }
    header = (
        CFB_MAGIC + bytes(16) + struct.pack("<5H", 0x3E, 3, 0xFFFE, 9, 6) + bytes(6)
        + struct.pack("<4L", 0, fat_sectors, starts["directory"], 0)
        + struct.pack("<4L", 4096, starts["minifat"], runs[1][1], END_OF_CHAIN)
        + struct.pack("<L", 0)
        + struct.pack("<109L", *(list(range(fat_sectors)) + [NO_STREAM] * (109 - fat_sectors)))
    )
    body = struct.pack(f"<{len(fat)}L", *fat)
    for what, count in runs:
        body += contents[what].ljust(count * SECTOR, b"\x00")
    return header + body


def word_stream(encrypted: bool) -> bytes:
    flags = 0x1200 | (0x0100 if encrypted else 0)
    return struct.pack("<HHHHHH", 0xA5EC, 0xC1, 9, 0x0409, 0, flags).ljust(4096, b"\x00")


def workbook_stream(encrypted: bool) -> bytes:
    records = struct.pack("<HH", 0x0809, 16) + bytes(16)
    if encrypted:
        records += struct.pack("<HHH", 0x002F, 2, 0)  # FILEPASS, XOR obfuscation
    return (records + struct.pack("<HH", 0x00E1, 2) + bytes(2)).ljust(5000, b"\x00")


def current_user_stream(encrypted: bool) -> bytes:
    token = 0xF3D1C4DF if encrypted else 0xE391C05F
    return struct.pack("<HHLLL", 0, 0x0FF6, 20, 20, token) + bytes(16)


@pytest.mark.parametrize(
    ("streams", "encrypted", "reason"),
    [
        ({"EncryptionInfo": bytes(300), "EncryptedPackage": bytes(5000)}, True, "EncryptionInfo"),
        ({"WordDocument": word_stream(True), "1Table": bytes(100)}, True, "FIB fEncrypted"),
        ({"WordDocument": word_stream(False), "1Table": bytes(100)}, False, "without encryption"),
        ({"Workbook": workbook_stream(True)}, True, "FILEPASS"),
        ({"Workbook": workbook_stream(False)}, False, "without encryption"),
        ({"Current User": current_user_stream(True), "PowerPoint Document": bytes(5000)}, True, "Atom"),
        ({"Current User": current_user_stream(False), "PowerPoint Document": bytes(5000)}, False, "without"),
        ({"\x05SummaryInformation": bytes(200)}, False, "without encryption"),
    ],
)
def test_compound_file_verdict_follows_the_encryption_marker(streams, encrypted, reason) -> None:
    report = inspect_container(compound_file(streams))
    assert (report.kind, report.encrypted) == ("office", encrypted)
    assert reason in report.reason


def test_directory_chain_that_loops_is_unreadable() -> None:
    data = bytearray(compound_file({"Workbook": workbook_stream(True)}))
    directory_sector = struct.unpack_from("<L", data, 0x30)[0]
    struct.pack_into("<L", data, SECTOR + 4 * directory_sector, directory_sector)  # FAT: to itself
    report = inspect_container(bytes(data))
    assert (report.encrypted, report.reason) == (
        False, "unreadable: compound file sector chain loops or leaves the data"
    )


def test_difat_chain_that_loops_is_unreadable() -> None:
    data = bytearray(compound_file({"Workbook": workbook_stream(True)}))
    struct.pack_into("<L", data, 0x2C, 5000)  # claims more FAT sectors than the header lists
    struct.pack_into("<L", data, 0x44, 1)  # DIFAT starts at sector 1 ...
    struct.pack_into("<L", data, 2 * SECTOR - 4 + SECTOR, 1)  # ... whose last entry points at itself
    assert inspect_container(bytes(data)).reason == "unreadable: compound file DIFAT chain loops"


def test_compound_file_bytes_mutated_at_random_never_raise() -> None:
    rng = random.Random(11)
    originals = [fixture("encrypted.docx"), compound_file({"Current User": current_user_stream(True)})]
    for _ in range(500):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        assert inspect_container(bytes(data)).kind in ("office", "none")  # "none": magic hit


@pytest.mark.parametrize("shift", [0, 7, 16, 0xFFFF])
def test_compound_file_with_an_odd_sector_size_is_unreadable(shift: int) -> None:
    data = bytearray(compound_file({"Workbook": workbook_stream(True)}))
    struct.pack_into("<H", data, 0x1E, shift)
    assert inspect_container(bytes(data)).reason == f"unreadable: compound file sector shift {shift}"


# --- PDF ---------------------------------------------------------------------------------


def test_pdf_behind_a_little_junk_is_still_a_pdf_but_not_behind_much() -> None:
    encrypted = fixture("encrypted.pdf")
    assert inspect_container(b"\r\n" * 400 + encrypted).encrypted
    assert inspect_container(b"x" * 1100 + encrypted).kind == "none"


@pytest.mark.parametrize(
    "trailer",
    [
        b"trailer\n<< /Size 7 /Root 1 0 R /Encrypt 9 0 R >>",
        b"trailer<</Size 7/Root 1 0 R/Encrypt\r\n12\n0\nR>>",
        b"trailer\n<< /Encrypt << /Filter /Standard /V 5 /R 6 >> /Root 1 0 R >>",
        b"trailer\n<</Encrypt<</Filter/Standard>>/Root 1 0 R>>",
    ],
)
def test_pdf_encrypt_entry_as_reference_or_dictionary_is_found(trailer: bytes) -> None:
    assert inspect_container(PLAIN_PDF + trailer + b"\nstartxref\n0\n%%EOF\n").encrypted


@pytest.mark.parametrize(
    "text",
    [
        b"<< /EncryptMetadata false >>",
        b"<< /Encrypt1 0 R >>",
        b"(the /Encrypt word in prose)",
        b"<< /Encrypt /None >>",
    ],
)
def test_pdf_mentions_that_are_no_encrypt_entry_do_not_count(text: bytes) -> None:
    assert not inspect_container(PLAIN_PDF.replace(b"trailer\n", b"trailer\n" + text + b"\n")).encrypted


def test_pdf_encrypt_entry_far_from_the_end_is_found_too() -> None:
    # linearized files carry a first-page trailer near the start
    start = b"%PDF-1.7\n1 0 obj\n<< /Linearized 1 >>\nendobj\ntrailer\n<< /Encrypt 5 0 R >>\n"
    assert inspect_container(start + b"% filler\n" * 20_000).encrypted


# --- hostile and truncated input -----------------------------------------------------------

MAGICS = {
    "7z": b"7z\xbc\xaf\x27\x1c",
    "office": CFB_MAGIC,
    "pdf": b"%PDF-1.7\n",
}


@pytest.mark.parametrize("kind", sorted(MAGICS))
def test_random_bytes_behind_a_magic_give_a_plain_verdict(kind: str) -> None:
    rng = random.Random(kind)
    for size in (0, 1, 20, 31, 32, 511, 512, 513, 4096, 70_000):
        data = MAGICS[kind] + rng.randbytes(size)
        report = inspect_container(data)
        assert report.kind == kind and not report.encrypted


@pytest.mark.parametrize("kind", sorted(MAGICS))
def test_twenty_megabytes_behind_a_magic_are_judged_quickly(kind: str) -> None:
    data = MAGICS[kind] + random.Random(1).randbytes(20 * 1024 * 1024)
    started = time.perf_counter()
    inspect_container(data)
    assert time.perf_counter() - started < 5  # hang guard; well under a second in practice


def test_pdf_full_of_near_miss_encrypt_names_is_judged_in_linear_time() -> None:
    data = b"%PDF-1.7\n" + b"/Encrypt " + b" " * 63 + b"12 " * 3 + b"/EncryptX " * 1_500_000
    started = time.perf_counter()
    assert not inspect_container(data).encrypted
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "name",
    sorted(path.name for path in FIXTURES.iterdir() if path.suffix in (".7z", ".docx", ".pdf")),
)
def test_truncated_fixture_gives_a_defined_verdict(name: str) -> None:
    original = fixture(name)
    kind = inspect_container(original).kind
    for length in sorted({8, 9, 31, 32, 100, 511, 512, len(original) // 2, len(original) - 1}):
        report = inspect_container(original[:length])
        assert isinstance(report, ContainerReport) and report.kind == kind


def test_truncated_encrypted_7z_loses_its_header_and_says_so() -> None:
    report = inspect_container(fixture("encrypted.7z")[:-10])
    assert report == ContainerReport(
        "7z", False, "unreadable: 7z header lies past the end of the data (truncated?)"
    )


# --- ZIPs inside a ZIP ---------------------------------------------------------------------


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def aes_zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    options = {"compression": pyzipper.ZIP_DEFLATED, "encryption": pyzipper.WZ_AES}
    with pyzipper.AESZipFile(buffer, "w", **options) as archive:
        archive.setpassword(b"Qm7vK2p9L")
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


INNER = zip_of({"見積書.xlsx": b"x" * 2000, "readme.txt": b"hello"})


def nested(data: bytes) -> tuple[str, ...]:
    return nested_zip_names(data, inspect_zip(data))


def test_zip_holding_a_zip_named_so_is_a_double_zip() -> None:
    outer = zip_of({"readme.txt": b"hi", "資料/inner.ZIP": INNER})
    assert nested(outer) == ("資料/inner.ZIP",)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_renamed_inside_a_plain_zip_is_found_by_its_bytes(method: int) -> None:
    outer = zip_of({"data.bin": INNER, "notes.txt": b"PK but not a zip"}, method)
    assert nested(outer) == ("data.bin",)


def test_plain_zip_without_zips_inside_has_none() -> None:
    assert nested(zip_of({"a.txt": b"a", "b.xlsx": b"PK\x05\x06 not a local header"})) == ()
    assert nested((CORPUS_FILES / "04_unencrypted_7zip.zip").read_bytes()) == ()


def test_encrypted_outer_zip_tells_its_inner_zip_by_name_only() -> None:
    outer = aes_zip_of({"inner.zip": INNER, "renamed.bin": INNER})
    assert inspect_zip(outer).verdict is ZipVerdict.ENCRYPTED_ZIP
    assert nested(outer) == ("inner.zip",)


def test_japanese_cp932_member_name_of_an_inner_zip_is_decoded() -> None:
    # written by hand: zipfile cannot store a CP932 name without the UTF-8 flag
    name = "二重.bin".encode("cp932")
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(INNER), len(INNER), len(INNER),
        len(name), 0,
    )
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(INNER), len(INNER), len(INNER),
        len(name), 0, 0, 0, 0, 0, 0,
    )
    body = local + name + INNER
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), len(body), 0)
    assert nested(body + central + name + eocd) == ("二重.bin",)


def test_not_a_zip_or_corrupt_zip_has_no_nested_names() -> None:
    assert nested(PLAIN_PDF) == ()
    assert nested(b"PK\x03\x04" + bytes(40)) == ()


def test_many_inner_zips_give_a_bounded_list() -> None:
    outer = zip_of({f"part{index}.zip": INNER[:40] for index in range(500)}, zipfile.ZIP_STORED)
    started = time.perf_counter()
    names = nested(outer)
    assert time.perf_counter() - started < 5
    assert names == tuple(f"part{index}.zip" for index in range(20))
