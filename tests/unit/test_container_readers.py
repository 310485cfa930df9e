"""inspect_rar, unpack_7z and compound_streams: real archives (7-Zip, WinRAR), archives and
compound files built byte by byte after the format specifications, and hostile bytes."""

from __future__ import annotations

import lzma
import random
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.containers import office
from gateway.containers.base import InspectionLimit, Unreadable, Unsupported
from gateway.containers.office import compound_streams
from gateway.containers.rar import RarReport, inspect_rar
from gateway.containers.sevenzip import unpack_7z
from gateway.model import ZipVerdict
from gateway.containers.zipinspect import inspect_zip

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARCHIVES = FIXTURES / "archives"
DOCUMENTED = (Unreadable, Unsupported, InspectionLimit)


def archive(name: str) -> bytes:
    return (ARCHIVES / name).read_bytes()


def outcome(call: Callable[..., Any], data: bytes, **options: Any) -> Any:
    """What a reader gives for data: its result, or the documented exception it raised.
    Any other exception fails the test that called this."""
    try:
        result = call(data, **options)
        return list(result) if call is compound_streams else result
    except DOCUMENTED as problem:
        return problem


def unpack_all(data: bytes, max_output: int = 50_000_000) -> list[bytes]:
    return unpack_7z(data, max_output=max_output)


def all_streams(data: bytes, max_output: int = 50_000_000) -> dict[str, bytes]:
    return dict(compound_streams(data, max_output=max_output))


# the inputs of the 7z fixtures (tests/unit/fixtures/archives/README.md)
NUMBERS = "".join(f"{number}\n" for number in range(1, 1001)).encode()
TOOL = b"MZ" + b"".join(b"\x55\x89\xe5\xe8" + i.to_bytes(4, "little") + b"\x5d\xc3" for i in range(1000))
ALPHA, BRAVO, CHARLIE = b"alpha\n" * 50, b"bravo\n" * 50, b"charlie\n" * 50


# --- 7z: unpack_7z on archives made by 7-Zip ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "folders"),
    [
        ("copy.7z", [NUMBERS]),
        ("lzma.7z", [NUMBERS]),
        ("lzma2.7z", [NUMBERS]),
        ("deflate.7z", [NUMBERS]),
        ("bzip2.7z", [NUMBERS]),
        ("bcj.7z", [TOOL]),  # BCJ + LZMA2
        ("bcj_lzma.7z", [TOOL]),  # BCJ + LZMA without an end marker: the filter's tail must flush
        ("arm.7z", [TOOL]),
        ("bcj_delta_lzma.7z", [TOOL]),
        ("bcj_deflate.7z", [TOOL]),
        ("solid.7z", [ALPHA + BRAVO + CHARLIE]),
        ("multi_folder.7z", [ALPHA, BRAVO, TOOL]),
    ],
)
def test_7z_folders_unpack_to_the_files_7zip_packed(name: str, folders: list[bytes]) -> None:
    assert unpack_all(archive(name)) == folders


def test_7z_with_a_packed_header_unpacks_too() -> None:
    # 30 small files: 7-Zip LZMA-packs the header that lists them
    (stream,) = unpack_all((FIXTURES / "containers" / "plain_packed_header.7z").read_bytes())
    assert len(stream) == 300


def test_encrypted_zip_inside_a_plain_7z_is_in_the_unpacked_stream() -> None:
    (stream,) = unpack_all(archive("nested_encrypted_zip.7z"))
    assert stream.startswith(b"PK\x03\x04")
    assert inspect_zip(stream).verdict is ZipVerdict.ENCRYPTED_ZIP


@pytest.mark.parametrize(
    ("name", "coder"),
    [
        ("ppmd.7z", "7z coder PPMd"),
        ("bcj2.7z", "7z coder BCJ2"),
        ("arm64.7z", "7z coder ARM64"),
        ("deflate64.7z", "7z coder Deflate64"),
    ],
)
def test_7z_coder_the_standard_library_lacks_is_unsupported(name: str, coder: str) -> None:
    with pytest.raises(Unsupported, match=coder):
        unpack_all(archive(name))


@pytest.mark.parametrize("name", ["encrypted.7z", "encrypted_header.7z", "encrypted_packed_header.7z"])
def test_encrypted_7z_is_unsupported(name: str) -> None:
    with pytest.raises(Unsupported, match="AES"):
        unpack_all((FIXTURES / "containers" / name).read_bytes())


def test_7z_bomb_stops_at_max_output() -> None:
    bomb = archive("bomb.7z")  # 1.6 KB holding 10,000,000 zero bytes
    assert unpack_all(bomb, 10_000_000) == [bytes(10_000_000)]
    with pytest.raises(InspectionLimit, match="7z archive expands beyond 9999999 bytes"):
        unpack_all(bomb, 9_999_999)
    tracemalloc.start()
    try:
        with pytest.raises(InspectionLimit):
            unpack_all(bomb, 1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def test_7z_max_output_counts_every_folder_together() -> None:
    data = archive("multi_folder.7z")
    assert unpack_all(data, len(ALPHA + BRAVO + TOOL)) == [ALPHA, BRAVO, TOOL]
    with pytest.raises(InspectionLimit):
        unpack_all(data, len(ALPHA + BRAVO + TOOL) - 1)


# --- 7z: hand-built archives ---------------------------------------------------------------


def seven_zip(header: bytes, packed: bytes = b"") -> bytes:
    """A 7z archive: start header with correct CRCs, then packed streams, then the header."""
    tail = struct.pack("<QQL", len(packed), len(header), zlib.crc32(header))
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + struct.pack("<L", zlib.crc32(tail)) + tail + packed + header


def number(value: int) -> bytes:
    """7z's variable-length number, in its 9-byte form (always valid)."""
    return b"\xff" + value.to_bytes(8, "little")


def folder_header(coders: bytes, packed_size: int, unpack_sizes: list[int], bind_pairs: bytes = b"") -> bytes:
    """kHeader -> MainStreamsInfo: one pack stream, one folder of these coders."""
    pack_info = b"\x06\x00\x01\x09" + number(packed_size) + b"\x00"
    unpack_info = b"\x07\x0b\x01\x00" + coders + bind_pairs + b"\x0c" + b"".join(map(number, unpack_sizes))
    return b"\x01\x04" + pack_info + unpack_info + b"\x00\x00"


COPY_CODER = b"\x01\x01\x00"  # one coder: flags (ID size 1), ID 00


def test_hand_built_copy_folder_unpacks_to_its_bytes() -> None:
    assert unpack_all(seven_zip(folder_header(COPY_CODER, 11, [11]), b"hello world")) == [b"hello world"]


def test_empty_7z_unpacks_to_nothing() -> None:
    assert unpack_all(seven_zip(b"")) == []


def test_7z_folder_claiming_more_than_it_holds_is_unreadable_without_allocating_the_claim() -> None:
    data = seven_zip(folder_header(COPY_CODER, 11, [1 << 60]), b"hello world")
    with pytest.raises(Unreadable, match="fewer bytes than it claims"):
        unpack_all(data)


def test_7z_folder_claiming_more_than_max_output_is_a_limit() -> None:
    data = seven_zip(folder_header(COPY_CODER, 100, [1 << 60]), bytes(100))
    with pytest.raises(InspectionLimit):
        unpack_all(data, 50)


def test_7z_folder_claiming_zero_bytes_unpacks_nothing_even_from_a_bomb() -> None:
    # zlib takes a limit of 0 bytes for "no limit": the 50 MB must never be inflated
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = compressor.compress(bytes(50_000_000)) + compressor.flush()
    data = seven_zip(folder_header(b"\x01\x03\x04\x01\x08", len(packed), [0]), packed)
    started = time.perf_counter()
    assert unpack_all(data, 1000) == [b""]
    assert time.perf_counter() - started < 0.5


def test_7z_lzma_claiming_a_4_gib_dictionary_is_unpacked_within_bounds() -> None:
    packed = lzma.compress(NUMBERS, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])
    coder = b"\x01\x23\x03\x01\x01\x05" + b"\x5d" + struct.pack("<L", 0xFFFFFFFF)
    data = seven_zip(folder_header(coder, len(packed), [len(NUMBERS)]), packed)
    assert unpack_all(data) == [NUMBERS]


def test_7z_lzma_options_liblzma_refuses_are_unsupported() -> None:
    coder = b"\x01\x23\x03\x01\x01\x05" + b"\x08" + struct.pack("<L", 1 << 16)  # lc=8: 7-Zip allows it
    with pytest.raises(Unsupported, match="liblzma"):
        unpack_all(seven_zip(folder_header(coder, 16, [16]), bytes(16)))


def test_7z_coders_bound_in_a_loop_are_unreadable() -> None:
    three_copies = b"\x03" + b"\x01\x00" * 3
    # coder 1's input from coder 2's output and coder 2's from coder 1's: a loop beside the chain
    looped = seven_zip(folder_header(three_copies, 4, [4, 4, 4], b"\x01\x02\x02\x01"), b"abcd")
    with pytest.raises(Unreadable, match="do not form a chain"):
        unpack_all(looped)


def test_7z_chain_of_two_stream_decoders_is_unsupported() -> None:
    two_copies = b"\x02" + b"\x01\x00" * 2  # Copy behind Copy: nothing 7-Zip writes
    with pytest.raises(Unsupported, match="7z coder chain Copy \\+ Copy"):
        unpack_all(seven_zip(folder_header(two_copies, 4, [4, 4], b"\x00\x01"), b"abcd"))


def test_7z_coder_ids_7zip_does_not_know_are_unsupported_by_their_hex() -> None:
    data = seven_zip(folder_header(b"\x01\x02\xab\xcd", 4, [4]), b"abcd")
    with pytest.raises(Unsupported, match="7z coder method abcd"):
        unpack_all(data)


def test_every_7z_folder_is_checked_before_any_is_unpacked() -> None:
    # two folders: a Copy claiming more than it holds (Unreadable once unpacked), then PPMd
    pack_info = b"\x06\x00\x02\x09" + number(4) + number(4) + b"\x00"
    ppmd_coder = b"\x01\x03\x03\x04\x01"
    unpack_info = b"\x07\x0b\x02\x00" + COPY_CODER + ppmd_coder + b"\x0c" + number(1 << 40) + number(4)
    with pytest.raises(Unsupported, match="PPMd"):
        unpack_all(seven_zip(b"\x01\x04" + pack_info + unpack_info + b"\x00\x00", b"abcdefgh"))


SEVEN_ZIP_FIXTURES = [
    "lzma.7z", "bcj.7z", "bcj_deflate.7z", "bzip2.7z", "solid.7z", "multi_folder.7z", "ppmd.7z", "bomb.7z",
]


@pytest.mark.parametrize("name", SEVEN_ZIP_FIXTURES)
def test_7z_truncated_at_every_37th_byte_raises_only_documented_errors(name: str) -> None:
    original = archive(name)
    for length in range(0, len(original), 37):
        outcome(unpack_7z, original[:length], max_output=20_000_000)


@pytest.mark.parametrize("name", SEVEN_ZIP_FIXTURES)
def test_7z_bytes_mutated_at_random_raise_only_documented_errors(name: str) -> None:
    rng = random.Random(name)
    original = archive(name)
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(32, len(data))] = rng.randrange(256)
        outcome(unpack_7z, bytes(data), max_output=20_000_000)


def test_7z_header_mutated_at_random_with_crcs_fixed_raises_only_documented_errors() -> None:
    # with the CRCs made right, the mutations reach the header reader and the decoders
    rng = random.Random(17)
    for name in ("lzma.7z", "bcj.7z", "multi_folder.7z", "bcj_delta_lzma.7z"):
        original = archive(name)
        next_offset, next_size = struct.unpack_from("<QQ", original, 12)
        start = 32 + next_offset
        for _ in range(300):
            header = bytearray(original[start : start + next_size])
            for _ in range(rng.randint(1, 3)):
                header[rng.randrange(len(header))] = rng.randrange(256)
            outcome(unpack_7z, seven_zip(bytes(header), original[32:start]), max_output=1_000_000)


# --- RAR: inspect_rar on archives made by WinRAR -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "encrypted", "all_stored", "files"),
    [
        ("rar15-comment.rar", 4, False, False, 2),  # RAR 1.5, comments inside the headers
        ("rar202-comment-psw.rar", 4, True, False, 2),  # RAR 2.0 password
        ("rar3-comment-psw.rar", 4, True, False, 2),  # RAR 3 password: file flag 0x0004
        ("rar3-comment-hpsw.rar", 4, True, False, 0),  # RAR 3 -hp: archive flag 0x0080
        ("rar3-subdirs.rar", 4, False, True, 4),
        ("rar3-solid.rar", 4, False, False, 2),
        ("unicode2.rar", 4, False, True, 2),
        ("rar5-psw.rar", 5, True, False, 2),  # file encryption record
        ("rar5-hpsw.rar", 5, True, False, 0),  # archive encryption header
        ("rar5-subdirs.rar", 5, False, True, 4),
        ("rar5-solid.rar", 5, False, False, 2),
    ],
)
def test_rar_from_winrar_gets_its_report(name, version, encrypted, all_stored, files) -> None:
    report = inspect_rar(archive(name))
    assert (report.version, report.encrypted, report.all_stored, report.files) == (
        version, encrypted, all_stored, files,
    )
    assert report.reason.startswith(f"RAR {version}")


def test_rar_headers_encrypted_say_so() -> None:
    hidden = "headers encrypted (file names hidden)"
    assert inspect_rar(archive("rar5-hpsw.rar")).reason == f"RAR 5 {hidden}"
    assert inspect_rar(archive("rar3-comment-hpsw.rar")).reason == f"RAR 4 {hidden}"


# --- RAR: archives built by hand after RARLAB's technotes -----------------------------------

RAR4_SIGNATURE = b"Rar!\x1a\x07\x00"
RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"
DOS_TIME = 0x5A8E3100
SALT = bytes(range(8, 24))


def rar4_block(kind: int, flags: int, fields: bytes = b"", data: bytes = b"") -> bytes:
    """HEAD_CRC (low 16 bits of the CRC32 of what follows it), HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE."""
    head = struct.pack("<BHH", kind, flags, 7 + len(fields)) + fields
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + data


def rar4_file(
    name: bytes, content: bytes, *, method: int = 0x30, flags: int = 0, packed: bytes | None = None,
    kind: int = 0x74,
) -> bytes:
    """A file header (or, kind 0x7a, a service header) with PACK_SIZE as its ADD_SIZE."""
    packed = content if packed is None else packed
    fields = struct.pack(
        "<LLBLLBBHL", len(packed), len(content), 2, zlib.crc32(content), DOS_TIME, 29, method, len(name), 0x20
    ) + name
    if flags & 0x0400:
        fields += SALT[:8]
    return rar4_block(kind, flags | 0x8000, fields, packed)


def rar4_archive(*blocks: bytes, main_flags: int = 0) -> bytes:
    main, end = rar4_block(0x73, main_flags, bytes(6)), rar4_block(0x7B, 0x4000)
    return RAR4_SIGNATURE + main + b"".join(blocks) + end


def vint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def rar5_block(
    kind: int, fields: bytes = b"", *, flags: int = 0, extra: bytes = b"", data: bytes = b""
) -> bytes:
    """CRC32 of (header size, header); header: type, flags, [extra size], [data size], fields, extra."""
    flags |= (0x0001 if extra else 0) | (0x0002 if data else 0)
    body = vint(kind) + vint(flags)
    body += vint(len(extra)) if extra else b""
    body += vint(len(data)) if flags & 0x0002 else b""
    body += fields + extra
    header = vint(len(body)) + body
    return struct.pack("<L", zlib.crc32(header)) + header + data


def rar5_file(
    name: bytes, content: bytes, *, method: int = 0, packed: bytes | None = None, extra: bytes = b"",
    directory: bool = False, kind: int = 2,
) -> bytes:
    packed = content if packed is None else packed
    attributes = 0x10 if directory else 0x20
    fields = vint(0x0004 | (0x0001 if directory else 0)) + vint(len(content)) + vint(attributes)
    fields += struct.pack("<L", zlib.crc32(content)) + vint(method << 7) + vint(0) + vint(len(name)) + name
    return rar5_block(kind, fields, flags=0x0002, extra=extra, data=packed)  # WinRAR: a data area, even empty


def rar5_archive(*blocks: bytes) -> bytes:
    return RAR5_SIGNATURE + rar5_block(1, vint(0)) + b"".join(blocks) + rar5_block(5, vint(0))


def rar5_encryption_record() -> bytes:
    """File encryption extra record: AES-256, password check value present, 2^15 rounds."""
    record = vint(0x01) + vint(0) + vint(0x0001) + bytes([15]) + SALT + SALT[::-1] + bytes(12)
    return vint(len(record)) + record


INNER_ZIP = b"PK\x03\x04" + bytes(26) + b"stored bytes of a zip"


def hand_built_rars() -> dict[str, bytes]:
    """Archives whose reports the tests below state; checked once against rarfile and bsdtar
    (see tests/unit/fixtures/archives/README.md)."""
    cipher = bytes(range(32))
    return {
        "rar4_stored.rar": rar4_archive(rar4_file(b"inner.zip", INNER_ZIP), rar4_file(b"a.txt", b"alpha\n")),
        "rar4_compressed.rar": rar4_archive(
            rar4_file(b"a.txt", b"alpha\n" * 9, method=0x33, packed=b"\x0c" * 9)
        ),
        "rar4_encrypted_file.rar": rar4_archive(
            rar4_file(b"a.txt", b"alpha\n"),
            rar4_file(b"b.txt", b"bravo\n", flags=0x0004 | 0x0400, packed=cipher),
        ),
        "rar4_encrypted_headers.rar": RAR4_SIGNATURE + rar4_block(0x73, 0x0080, bytes(6)) + SALT[:8] + cipher,
        "rar5_stored.rar": rar5_archive(
            rar5_file(b"dir", b"", directory=True),
            rar5_file(b"dir/inner.zip", INNER_ZIP),
            rar5_file(b"a.txt", b"alpha\n"),
        ),
        "rar5_compressed.rar": rar5_archive(
            rar5_file(b"a.txt", b"alpha\n" * 9, method=3, packed=b"\x0c" * 9)
        ),
        "rar5_encrypted_file.rar": rar5_archive(
            rar5_file(b"a.txt", b"alpha\n"),
            rar5_file(b"b.txt", b"bravo\n", packed=cipher, extra=rar5_encryption_record()),
        ),
        "rar5_encrypted_headers.rar": RAR5_SIGNATURE
        + rar5_block(4, vint(0) + vint(0x0001) + bytes([15]) + SALT + bytes(12))
        + SALT
        + cipher,
    }


@pytest.mark.parametrize(
    ("name", "encrypted", "all_stored", "files"),
    [
        ("rar4_stored.rar", False, True, 2),
        ("rar4_compressed.rar", False, False, 1),
        ("rar4_encrypted_file.rar", True, False, 2),
        ("rar4_encrypted_headers.rar", True, False, 0),
        ("rar5_stored.rar", False, True, 2),
        ("rar5_compressed.rar", False, False, 1),
        ("rar5_encrypted_file.rar", True, False, 2),
        ("rar5_encrypted_headers.rar", True, False, 0),
    ],
)
def test_hand_built_rar_gets_its_report(name: str, encrypted: bool, all_stored: bool, files: int) -> None:
    report = inspect_rar(hand_built_rars()[name])
    version = int(name[3])
    assert report == RarReport(version, encrypted, all_stored, files, report.reason)


@pytest.mark.parametrize("name", ["rar4_stored.rar", "rar5_stored.rar"])
def test_stored_rar_holds_its_files_bytes_as_they_are(name: str) -> None:
    data = hand_built_rars()[name]
    assert inspect_rar(data).all_stored and INNER_ZIP in data


def test_rar_alternate_data_stream_counts_as_content_but_a_comment_does_not() -> None:
    packed = b"\x0c" * 9
    comment = rar4_file(b"CMT", b"comment\n", method=0x33, packed=packed, kind=0x7A)
    stream = rar4_file(b"STM", b"stream\n", method=0x33, packed=packed, kind=0x7A)
    assert inspect_rar(rar4_archive(rar4_file(b"a.txt", b"a"), comment)).all_stored
    assert not inspect_rar(rar4_archive(rar4_file(b"a.txt", b"a"), stream)).all_stored
    comment5 = rar5_file(b"CMT", b"comment\n", method=3, packed=packed, kind=3)
    stream5 = rar5_file(b"STM", b"stream\n", method=3, packed=packed, kind=3)
    assert inspect_rar(rar5_archive(rar5_file(b"a.txt", b"a"), comment5)).all_stored
    assert not inspect_rar(rar5_archive(rar5_file(b"a.txt", b"a"), stream5)).all_stored


def test_rar_encrypted_service_header_counts_as_encrypted() -> None:
    service = rar5_file(b"STM", b"stream\n", packed=bytes(16), kind=3, extra=rar5_encryption_record())
    assert inspect_rar(rar5_archive(rar5_file(b"a.txt", b"a"), service)).encrypted


@pytest.mark.parametrize("name", ["rar4_stored.rar", "rar5_stored.rar"])
def test_rar_header_with_a_wrong_crc_is_unreadable(name: str) -> None:
    data = bytearray(hand_built_rars()[name])
    data[data.index(b"a.txt")] ^= 0x20  # the file name: covered by the CRC, nothing else reads it
    with pytest.raises(Unreadable, match="CRC mismatch"):
        inspect_rar(bytes(data))


def test_rar_password_flag_in_a_header_with_a_wrong_crc_counts_for_nothing() -> None:
    data = bytearray(hand_built_rars()["rar4_encrypted_file.rar"])
    data[data.index(b"b.txt")] ^= 0x20
    with pytest.raises(Unreadable, match="CRC mismatch"):
        inspect_rar(bytes(data))


def test_rar_encrypted_entry_read_before_the_break_still_counts() -> None:
    data = hand_built_rars()["rar4_encrypted_file.rar"]
    report = inspect_rar(data[: data.index(bytes(range(32))) + 5])  # cut inside the encrypted data
    assert report.encrypted and not report.all_stored and "then RAR block data runs past" in report.reason
    data5 = hand_built_rars()["rar5_encrypted_file.rar"]
    assert inspect_rar(data5[: data5.index(bytes(range(32))) + 5]).encrypted


def test_rar_file_claiming_a_huge_size_is_unreadable() -> None:
    # HIGH_PACK_SIZE (flag 0x0100) makes the claim 2^63 + 4
    fields = struct.pack("<LLBLLBBHL", 4, 4, 2, 0, DOS_TIME, 29, 0x30, 1, 0x20)
    fields += struct.pack("<LL", 1 << 31, 0) + b"a"
    with pytest.raises(Unreadable, match="past the end"):
        inspect_rar(rar4_archive(rar4_block(0x74, 0x8000 | 0x0100, fields, b"abcd")))
    huge_data = RAR5_SIGNATURE + rar5_block(1, vint(0))
    body = vint(2) + vint(0x0002) + vint(1 << 62) + vint(0) * 3 + vint(0) * 3
    huge_data += struct.pack("<L", zlib.crc32(vint(len(body)) + body)) + vint(len(body)) + body
    with pytest.raises(Unreadable, match="past the end"):
        inspect_rar(huge_data)


@pytest.mark.parametrize(
    ("size_field", "problem"),
    [(vint(1 << 40), "header of"), (vint(0), "header of"), (b"\xff" * 11, "longer than 10 bytes")],
)
def test_rar5_header_size_out_of_bounds_is_unreadable(size_field: bytes, problem: str) -> None:
    with pytest.raises(Unreadable, match=problem):
        inspect_rar(RAR5_SIGNATURE + b"\x00\x00\x00\x00" + size_field + bytes(64))


@pytest.mark.parametrize("version", [4, 5])
def test_rar_with_more_than_100000_blocks_is_a_limit(version: int) -> None:
    if version == 4:
        data = rar4_archive(rar4_block(0x7C, 0) * 100_000)  # unknown blocks are skipped
    else:
        data = rar5_archive(rar5_block(6) * 100_000)
    started = time.perf_counter()
    with pytest.raises(InspectionLimit, match="more than 100000 blocks"):
        inspect_rar(data)
    assert time.perf_counter() - started < 5


def test_rar_without_its_archive_header_is_unreadable() -> None:
    with pytest.raises(Unreadable, match="archive header missing"):
        inspect_rar(RAR4_SIGNATURE + rar4_file(b"a.txt", b"a"))
    with pytest.raises(Unreadable, match="archive header missing"):
        inspect_rar(RAR5_SIGNATURE + rar5_file(b"a.txt", b"a"))
    with pytest.raises(Unreadable, match="no RAR signature"):
        inspect_rar(b"Rar!\x1a\x07\x02\x00")


def rar_samples() -> dict[str, bytes]:
    names = ["rar15-comment.rar", "rar3-comment-psw.rar", "rar3-subdirs.rar", "rar5-psw.rar"]
    names.append("rar5-subdirs.rar")
    return {**{name: archive(name) for name in names}, **hand_built_rars()}


@pytest.mark.parametrize("name", sorted(rar_samples()))
def test_rar_truncated_at_every_37th_byte_raises_only_documented_errors(name: str) -> None:
    original = rar_samples()[name]
    for length in range(0, len(original), 37):
        assert isinstance(outcome(inspect_rar, original[:length]), (RarReport, *DOCUMENTED))


@pytest.mark.parametrize("name", sorted(rar_samples()))
def test_rar_bytes_mutated_at_random_raise_only_documented_errors(name: str) -> None:
    rng = random.Random(name)
    original = rar_samples()[name]
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        outcome(inspect_rar, bytes(data))


def test_rar_mutations_with_crcs_fixed_raise_only_documented_errors() -> None:
    # mutate the fields after HEAD_CRC and recompute it, so the mutations reach the parser
    rng = random.Random(23)
    for _ in range(2000):
        fields = bytearray(rng.randbytes(rng.randrange(0, 60)))
        flags = rng.choice([0, 0x8000, 0x8100, 0x9424, 0x800C, rng.randrange(0x10000)])
        kind = rng.choice([0x74, 0x7A, 0x73, 0x7B, 0x76, rng.randrange(256)])
        block = rar4_block(kind, flags, bytes(fields), rng.randbytes(rng.randrange(8)))
        outcome(inspect_rar, rar4_archive(block))
        body = rng.randbytes(rng.randrange(1, 60))
        header = vint(len(body)) + body
        outcome(inspect_rar, rar5_archive(struct.pack("<L", zlib.crc32(header)) + header))


# --- compound files: compound_streams --------------------------------------------------------

SECTOR = 512
END_OF_CHAIN, FAT_SECTOR, FREE_SECTOR, NO_STREAM = 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF, 0xFFFFFFFF
CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def compound(tree: dict[str, Any], *, seed: int = 3, version: int = 3) -> bytes:
    """A compound file ([MS-CFB]; version 3: 512-byte sectors, 4: 4096) holding tree:
    {name: bytes} for a stream, {name: dict} for a storage. Streams under 4096 bytes go to
    the mini stream; every regular sector is placed at random, so no chain of more than one
    sector is contiguous but by chance."""
    sector = 512 if version == 3 else 4096
    per_fat_sector = sector // 4
    entries: list[dict[str, Any]] = [{"name": "Root Entry", "kind": 5, "children": []}]

    pending = [(tree, 0)]
    while pending:
        subtree, parent = pending.pop()
        for name, value in subtree.items():
            entries[parent]["children"].append(len(entries))
            if isinstance(value, dict):
                entries.append({"name": name, "kind": 1, "children": []})
                pending.append((value, len(entries) - 1))
            else:
                entries.append({"name": name, "kind": 2, "children": [], "data": value})
    mini_stream, mini_fat = bytearray(), []
    regular: dict[str, bytes] = {}
    for index, entry in enumerate(entries):
        data = entry.get("data")
        if data is None or not data:
            entry["start"] = END_OF_CHAIN
        elif len(data) < 4096:
            entry["start"] = len(mini_stream) // 64
            count = -(-len(data) // 64)
            mini_fat += [entry["start"] + i + 1 for i in range(count - 1)] + [END_OF_CHAIN]
            mini_stream += data.ljust(count * 64, b"\x00")
        else:
            regular[f"stream{index}"] = data
    directory_sectors = -(-len(entries) * 128 // sector)
    contents = {
        "minifat": struct.pack(f"<{len(mini_fat)}L", *mini_fat),
        "ministream": bytes(mini_stream),
        **regular,
        "directory": bytes(directory_sectors * sector),  # written once the chains are placed
    }
    counts = {what: -(-len(data) // sector) for what, data in contents.items()}
    body_sectors = sum(counts.values())
    fat_sectors = 1
    while fat_sectors * per_fat_sector < fat_sectors + body_sectors:
        fat_sectors += 1
    places = list(range(fat_sectors, fat_sectors + body_sectors))
    random.Random(seed).shuffle(places)
    chains: dict[str, list[int]] = {}
    for what, count in counts.items():
        chains[what], places = places[:count], places[count:]
    fat = [FAT_SECTOR] * fat_sectors + [FREE_SECTOR] * (fat_sectors * per_fat_sector - fat_sectors)
    for chain in chains.values():
        for place, following in zip(chain, chain[1:] + [END_OF_CHAIN]):
            fat[place] = following

    def start(what: str) -> int:
        return chains[what][0] if chains[what] else END_OF_CHAIN

    entries[0]["start"], entries[0]["data"] = start("ministream"), bytes(mini_stream)
    for index, entry in enumerate(entries):
        if f"stream{index}" in regular:
            entry["start"] = start(f"stream{index}")
    siblings = {child: NO_STREAM for entry in entries for child in entry["children"]}
    for entry in entries:  # children as a chain of right siblings
        for child, right in zip(entry["children"], entry["children"][1:]):
            siblings[child] = right
    directory = b""
    for index, entry in enumerate(entries):
        encoded = entry["name"].encode("utf-16-le") + b"\x00\x00"
        child = entry["children"][0] if entry["children"] else NO_STREAM
        directory += (
            encoded.ljust(64, b"\x00")
            + struct.pack("<HBB", len(encoded), entry["kind"], 1)
            + struct.pack("<3L", NO_STREAM, siblings.get(index, NO_STREAM), child)
            + bytes(16 + 4 + 16)
            + struct.pack("<LQ", entry["start"], len(entry.get("data") or b""))
        )
    unused = bytes(64) + struct.pack("<HBB3L", 0, 0, 0, NO_STREAM, NO_STREAM, NO_STREAM) + bytes(48)
    contents["directory"] = directory + unused * (directory_sectors * sector // 128 - len(entries))
    header = (
        CFB_MAGIC + bytes(16) + struct.pack("<5H", 0x3E, version, 0xFFFE, 9 if version == 3 else 12, 6)
        + bytes(6)
        + struct.pack("<4L", 0 if version == 3 else directory_sectors, fat_sectors, start("directory"), 0)
        + struct.pack("<4L", 4096, start("minifat"), counts["minifat"], END_OF_CHAIN)
        + struct.pack("<L", 0)
        + struct.pack("<109L", *(list(range(fat_sectors)) + [NO_STREAM] * (109 - fat_sectors)))
    )
    body = bytearray(struct.pack(f"<{len(fat)}L", *fat) + bytes(body_sectors * sector))
    for what, chain in chains.items():
        data = contents[what]
        for position, place in enumerate(chain):
            piece = data[position * sector : (position + 1) * sector]
            body[place * sector : place * sector + len(piece)] = piece
    return header.ljust(sector, b"\x00") + bytes(body)


BIG = bytes(random.Random(1).randbytes(9000))  # 18 regular sectors
SMALL = b"small stream in the mini stream " * 40  # 1280 bytes: 20 mini sectors
ATTACHED_ZIP = INNER_ZIP + bytes(5000)


def outlook_item() -> dict[str, Any]:
    """The shape of an Outlook .msg: properties, a subject, two attachments (one big, one small)."""
    return {
        "__properties_version1.0": bytes(32),
        "__substg1.0_0037001F": "見積書".encode("utf-16-le"),
        "__attach_version1.0_#00000000": {
            "__properties_version1.0": bytes(16),
            "__substg1.0_3707001F": "secret.zip".encode("utf-16-le"),
            "__substg1.0_37010102": ATTACHED_ZIP,
        },
        "__attach_version1.0_#00000001": {
            "__substg1.0_37010102": SMALL,
            "\x01Ole10Native": b"\x05\x00\x00\x00hello",
        },
    }


def test_two_streams_one_regular_and_non_contiguous_one_in_the_mini_stream() -> None:
    data = compound({"Big": BIG, "Small": SMALL})
    assert all_streams(data) == {"Big": BIG, "Small": SMALL}
    reader = office._CompoundFile(data)
    big = next(entry for entry in reader.entries() if entry.name == "Big")
    chain = reader._chain(big.start)
    assert len(chain) == 18 and chain != list(range(chain[0], chain[0] + 18))  # not contiguous


def test_version_4_compound_file_with_4096_byte_sectors_is_read_too() -> None:
    assert all_streams(compound(outlook_item(), version=4)) == all_streams(compound(outlook_item()))


def test_outlook_item_streams_come_with_their_storage_paths() -> None:
    streams = all_streams(compound(outlook_item()))
    assert streams["__attach_version1.0_#00000000/__substg1.0_37010102"] == ATTACHED_ZIP
    assert streams["__attach_version1.0_#00000001/__substg1.0_37010102"] == SMALL
    assert streams["__attach_version1.0_#00000001/\x01Ole10Native"] == b"\x05\x00\x00\x00hello"
    assert streams["__substg1.0_0037001F"].decode("utf-16-le") == "見積書"
    assert len(streams) == 7


def test_empty_stream_and_empty_storage_are_fine() -> None:
    assert all_streams(compound({"Empty": b"", "Folder": {}})) == {"Empty": b""}


def test_real_encrypted_docx_streams_are_read_whole() -> None:
    # written by msoffcrypto-tool: the EncryptedPackage stream starts with the package size
    streams = all_streams((FIXTURES / "containers" / "encrypted.docx").read_bytes())
    package = streams["EncryptedPackage"]
    size = struct.unpack_from("<Q", package)[0]
    assert len(package) - 8 == -(-size // 16) * 16
    assert "EncryptionInfo" in streams and "\x06DataSpaces/DataSpaceMap" in streams


def test_compound_streams_stop_at_max_output() -> None:
    data = compound(outlook_item())
    total = sum(len(stream) for stream in all_streams(data).values())
    assert len(all_streams(data, total)) == 7
    with pytest.raises(InspectionLimit, match=f"more than {total - 1} bytes"):
        all_streams(data, total - 1)


ENTRY_FIELDS = {"left": 0x44, "right": 0x48, "child": 0x4C, "start": 0x74, "size": 0x78}


def entry_offsets(data: bytes) -> dict[str, int]:
    """Where each named directory entry lies in the file."""
    reader = office._CompoundFile(data)
    sectors = reader._chain(struct.unpack_from("<L", data, 0x30)[0])
    offsets = {}
    for index, entry in enumerate(reader.entries()):
        offsets.setdefault(entry.name, (sectors[index // 4] + 1) * SECTOR + (index % 4) * 128)
    return offsets


def patch_entry(data: bytes, name: str, **fields: int) -> bytes:
    """Rewrite fields (left, right, child, start, size: 32 bits each) of the entry of that name."""
    result = bytearray(data)
    offset = entry_offsets(data)[name]
    for field, value in fields.items():
        struct.pack_into("<L", result, offset + ENTRY_FIELDS[field], value)
    return bytes(result)


def test_fat_chain_that_loops_is_unreadable() -> None:
    data = bytearray(compound({"Big": BIG}))
    reader = office._CompoundFile(bytes(data))
    chain = reader._chain(reader.entries()[1].start)
    struct.pack_into("<L", data, SECTOR + 4 * chain[-1], chain[3])  # the last sector leads back
    looped = patch_entry(bytes(data), "Big", size=19 * SECTOR)  # ... and the size asks for one more
    assert len(looped) > 19 * SECTOR
    with pytest.raises(Unreadable, match="loops"):
        all_streams(looped)


def test_mini_fat_chain_that_loops_is_unreadable() -> None:
    data = compound({"Small": SMALL})
    reader = office._CompoundFile(data)
    (mini_fat_sector,) = reader._chain(struct.unpack_from("<L", data, 0x3C)[0])
    looped = bytearray(data)
    struct.pack_into("<L", looped, (mini_fat_sector + 1) * SECTOR + 4 * 19, 0)  # last mini sector -> first
    with pytest.raises(Unreadable, match="loops"):
        all_streams(patch_entry(bytes(looped), "Small", size=len(SMALL) + 64))  # one more mini sector


def test_directory_tree_that_loops_is_unreadable() -> None:
    data = compound({"Folder": {"Inner": b"x"}})
    with pytest.raises(Unreadable, match="directory tree loops"):
        all_streams(patch_entry(data, "Inner", right=1))  # Inner's sibling is its own storage


def test_entries_sharing_one_chain_cost_no_more_than_the_data() -> None:
    # 4,000 entries all pointing at one 1 MB chain would be 4 GB of output if each were read
    streams = {f"s{index}": b"" for index in range(4000)}
    streams["Big"] = bytes(1 << 20)
    data = bytearray(compound(streams))
    offsets = entry_offsets(bytes(data))
    start = struct.unpack_from("<L", data, offsets["Big"] + ENTRY_FIELDS["start"])[0]
    for index in range(4000):
        struct.pack_into("<LL", data, offsets[f"s{index}"] + ENTRY_FIELDS["start"], start, 1 << 20)
    data = bytes(data)
    started = time.perf_counter()
    with pytest.raises(Unreadable, match="shared by two streams"):
        all_streams(data, 1 << 40)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("size", [0xFFFFFFFF, 1 << 30, 10_000_000, 19 * SECTOR])
def test_stream_claiming_a_huge_size_is_unreadable(size: int) -> None:
    with pytest.raises(Unreadable, match="larger than the file|shorter than its size"):
        all_streams(patch_entry(compound({"Big": BIG, "Small": SMALL}), "Big", size=size))


def nested_storages(depth: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"leaf": b"deep"}
    for level in range(depth):
        tree = {f"s{level}": tree}
    return tree


def test_storages_nested_128_deep_are_walked_without_recursion_but_not_deeper() -> None:
    (path,) = all_streams(compound(nested_storages(127)))  # the root is the 128th
    assert path.endswith("/s0/leaf") and path.count("/") == 127
    with pytest.raises(InspectionLimit, match="nested more than 128 deep"):
        all_streams(compound(nested_storages(128)))


def test_storages_nested_as_deep_as_the_data_allows_are_refused_quickly() -> None:
    data = compound(nested_storages(20_000))  # 2.5 MB of directory
    started = time.perf_counter()
    with pytest.raises(InspectionLimit):
        all_streams(data)
    assert time.perf_counter() - started < 1


def compound_samples() -> dict[str, bytes]:
    return {
        "outlook": compound(outlook_item()),
        "two_streams": compound({"Big": BIG, "Small": SMALL}),
        "docx": (FIXTURES / "containers" / "encrypted.docx").read_bytes(),
        "version4": compound({"Big": BIG, "Small": SMALL}, version=4),
    }


@pytest.mark.parametrize("name", sorted(compound_samples()))
def test_compound_file_truncated_at_every_37th_byte_raises_only_documented_errors(name: str) -> None:
    original = compound_samples()[name]
    for length in range(0, len(original), 37):
        outcome(compound_streams, original[:length], max_output=1 << 24)


@pytest.mark.parametrize("name", sorted(compound_samples()))
def test_compound_file_mutated_at_random_raises_only_documented_errors(name: str) -> None:
    rng = random.Random(name)
    original = compound_samples()[name]
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        outcome(compound_streams, bytes(data), max_output=1 << 24)


# --- every reader: random bytes behind the signature --------------------------------------------

SIGNATURES: dict[str, tuple[bytes, Callable[..., Any], dict[str, int]]] = {
    "7z": (b"7z\xbc\xaf\x27\x1c", unpack_7z, {"max_output": 1 << 24}),
    "rar4": (RAR4_SIGNATURE, inspect_rar, {}),
    "rar5": (RAR5_SIGNATURE, inspect_rar, {}),
    "cfb": (CFB_MAGIC, compound_streams, {"max_output": 1 << 24}),
}


@pytest.mark.parametrize("kind", sorted(SIGNATURES))
def test_random_bytes_behind_a_signature_raise_only_documented_errors(kind: str) -> None:
    signature, reader, options = SIGNATURES[kind]
    rng = random.Random(kind)
    for size in (0, 1, 7, 20, 31, 32, 100, 511, 512, 513, 4096, 70_000):
        for _ in range(20):
            outcome(reader, signature + rng.randbytes(size), **options)


@pytest.mark.parametrize("kind", sorted(SIGNATURES))
def test_twenty_megabytes_behind_a_signature_are_judged_quickly(kind: str) -> None:
    signature, reader, options = SIGNATURES[kind]
    data = signature + random.Random(1).randbytes(20 * 1024 * 1024)
    started = time.perf_counter()
    outcome(reader, data, **options)
    assert time.perf_counter() - started < 5


def test_a_large_stored_rar_is_walked_without_touching_its_data() -> None:
    data = rar5_archive(*(rar5_file(f"f{i}".encode(), bytes(1 << 20)) for i in range(20)))
    started = time.perf_counter()
    assert inspect_rar(data).files == 20
    assert time.perf_counter() - started < 5
