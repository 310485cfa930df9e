"""prove_password and extract_members on real archives and on hostile ones built byte by byte;
extract_members_into a store, reading the archive in place."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import pyzipper
from pyzipper.zipfile import CRCZipDecrypter

from gateway.store.blobs import BlobStore
from gateway.unlock.extract import (
    ExtractLimits,
    ExtractRefused,
    display_path,
    extract_members,
    extract_members_into,
    prove_password,
)
from gateway.unlock.opening import BlobSink

CORPUS_FILES = Path(__file__).resolve().parents[1] / "corpus" / "files"
LIMITS = ExtractLimits()
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def corpus(name: str) -> bytes:
    return (CORPUS_FILES / name).read_bytes()


def refusal(data: bytes, password: str, limits: ExtractLimits = LIMITS) -> str:
    with pytest.raises(ExtractRefused) as refused:
        extract_members(data, password, limits)
    return refused.value.reason


def pyzipper_contents(data: bytes, password: bytes) -> dict[str, str]:
    """Name → SHA-256 of each member as pyzipper itself reads it."""
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        return {
            info.filename: hashlib.sha256(archive.read(info, pwd=password)).hexdigest()
            for info in archive.infolist()
        }


def aes_zip(members: dict[str, bytes], password: bytes, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(buffer, "w", compression=compression, encryption=pyzipper.WZ_AES) as archive:
        archive.setpassword(password)
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def plain_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


# --- a ZipCrypto writer, written from APPNOTE 6.1, and a raw ZIP builder -----------------------


def _crc_step(value: int, byte: int) -> int:
    return ~zlib.crc32(bytes([byte]), ~value & 0xFFFFFFFF) & 0xFFFFFFFF


def zipcrypto_encrypt(plain: bytes, password: bytes, check_byte: int, seed: int = 1) -> bytes:
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = _crc_step(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = _crc_step(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    header = random.Random(seed).randbytes(11) + bytes([check_byte])
    cipher = bytearray()
    for byte in header + plain:
        stream = keys[2] | 2
        cipher.append(byte ^ (((stream * (stream ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(cipher)


@dataclass
class Entry:
    name: bytes
    payload: bytes  # as stored: compressed, encrypted
    crc: int
    size: int  # uncompressed size the headers declare
    flags: int = 0
    method: int = 8
    offset: int | None = None  # where the central entry points; default its own local header


def zipcrypto_entry(name: bytes, content: bytes, password: bytes, method: int = 8) -> Entry:
    stored = content
    if method == 8:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        stored = compressor.compress(content) + compressor.flush()
    crc = zlib.crc32(content)
    payload = zipcrypto_encrypt(stored, password, crc >> 24)
    return Entry(name, payload, crc, len(content), flags=0x1, method=method)


def build_zip(entries: list[Entry], extra_central: list[Entry] = ()) -> bytes:
    """Local headers and data, then a central directory (extra_central: entries that only have
    a central record, pointing wherever their offset says)."""
    body = bytearray()
    directory = bytearray()
    for entry in entries:
        offset = len(body)
        body += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, entry.flags, entry.method, 0, 0x21, entry.crc,
            len(entry.payload), entry.size, len(entry.name), 0,
        ) + entry.name + entry.payload
        entry.offset = offset if entry.offset is None else entry.offset
    for entry in [*entries, *extra_central]:
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, entry.flags,
            entry.method, 0, 0x21, entry.crc, len(entry.payload), entry.size, len(entry.name),
            0, 0, 0, 0, 0, entry.offset,
        ) + entry.name
    count = len(entries) + len(extra_central)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(body), 0)
    return bytes(body + directory + end)


def set_declared_size(data: bytes, size: int) -> bytes:
    """Rewrite every local and central header's uncompressed size (a single-member archive)."""
    patched = bytearray(data)
    struct.pack_into("<L", patched, 22, size)
    central = patched.find(b"PK\x01\x02")
    struct.pack_into("<L", patched, central + 24, size)
    return bytes(patched)


def measured_peak(action) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# --- real archives -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "password"),
    [("01_aes256_7zip_ja.zip", "Qm7#vK2p9L"), ("02_zipcrypto_infozip_ascii.zip", "h4Tn9xWe")],
)
def test_corpus_archive_extracts_to_the_names_and_bytes_pyzipper_reads(name: str, password: str) -> None:
    data = corpus(name)
    result = extract_members(data, password, LIMITS)
    assert {f.display_name: f.sha256 for f in result.files} == pyzipper_contents(data, password.encode())
    assert all(f.size == len(f.data) and f.sha256 == hashlib.sha256(f.data).hexdigest() for f in result.files)
    assert result.notes == ()
    assert prove_password(data, password)


def test_japanese_utf8_names_of_the_7zip_aes_archive_are_kept_exactly() -> None:
    result = extract_members(corpus("01_aes256_7zip_ja.zip"), "Qm7#vK2p9L", LIMITS)
    # the .xlsx is a ZIP inside the ZIP, but a document: it stays one file
    assert [f.display_name for f in result.files] == ["仕様書_庁内ネットワーク更新.pdf", "見積書_2026年11月.xlsx"]


def test_eicar_zipcrypto_archive_yields_the_eicar_file() -> None:
    result = extract_members(corpus("10_eicar_zipcrypto.zip"), "infected", LIMITS)
    assert [(f.display_name, f.data) for f in result.files] == [("eicar.com", EICAR)]


@pytest.mark.parametrize(
    "name", ["01_aes256_7zip_ja.zip", "02_zipcrypto_infozip_ascii.zip", "10_eicar_zipcrypto.zip"]
)
@pytest.mark.parametrize("wrong", ["", "wrong", "h4Tn9xWe ", "qm7#vk2p9l", "パスワード"])
def test_wrong_password_is_false_and_refused_as_wrong_password(name: str, wrong: str) -> None:
    assert prove_password(corpus(name), wrong) is False
    assert refusal(corpus(name), wrong) == "wrong password"


def test_plain_archive_proves_no_password_but_extracts() -> None:
    data = corpus("04_unencrypted_7zip.zip")
    assert prove_password(data, "anything") is False
    assert extract_members(data, "anything", LIMITS).files


# --- proof: check byte, CRC, verifier, MAC ------------------------------------------------------


def test_zipcrypto_password_passing_only_the_check_byte_is_not_proven() -> None:
    content = b"member list, 2026\n" * 200
    # stored, not deflated: garbage then has the right length and only the CRC can tell
    data = build_zip([zipcrypto_entry(b"member_list.csv", content, b"h4Tn9xWe", method=0)])
    assert prove_password(data, "h4Tn9xWe")
    info = pyzipper.AESZipFile(io.BytesIO(data)).infolist()[0]
    generator = random.Random(5)
    impostor = None
    for _ in range(5000):  # the check byte lets 1 password in 256 through
        guess = "".join(generator.choices("abcdefghijkmnpqrstuvwxyz23456789", k=8))
        try:
            CRCZipDecrypter(info, guess.encode(), data[30 + 15 : 30 + 15 + 12])
        except RuntimeError:
            continue
        impostor = guess
        break
    assert impostor is not None  # pyzipper's own check byte test lets it in ...
    assert prove_password(data, impostor) is False  # ... the CRC of the inflated data does not
    assert refusal(data, impostor) == "wrong password"


def test_zipcrypto_archive_built_here_is_read_by_pyzipper() -> None:
    data = build_zip([zipcrypto_entry(b"a.txt", b"hello " * 50, b"pw")])
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        assert archive.read("a.txt", pwd=b"pw") == b"hello " * 50


def test_one_flipped_byte_in_aes_data_fails_the_authentication_code() -> None:
    data = bytearray(aes_zip({"a.txt": b"quotation " * 1000}, b"Qm7#vK2p9L"))
    data[30 + 5 + 11 + 16 + 2 + 40] ^= 0x01  # local header, name, AES extra, salt, verifier, data
    assert prove_password(bytes(data), "Qm7#vK2p9L") is False
    assert refusal(bytes(data), "Qm7#vK2p9L") == "wrong password"


def test_one_flipped_byte_in_zipcrypto_data_fails_the_crc() -> None:
    data = bytearray(build_zip([zipcrypto_entry(b"a.txt", b"hello " * 100, b"pw", method=0)]))
    data[30 + 5 + 12 + 300] ^= 0x01
    assert prove_password(bytes(data), "pw") is False
    assert refusal(bytes(data), "pw") == "wrong password"


def test_password_must_open_every_encrypted_member() -> None:
    first = zipcrypto_entry(b"a.txt", b"a" * 100, b"right")
    second = zipcrypto_entry(b"b.txt", b"b" * 100, b"other")
    data = build_zip([first, second])
    assert prove_password(data, "right") is False
    assert refusal(data, "right") == "wrong password"


def test_aes_members_compressed_with_bzip2_and_lzma_extract() -> None:
    content = "見積書 2026年11月\n".encode() * 2000
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, zipfile.ZIP_STORED):
        data = aes_zip({"a.txt": content}, b"Qm7#vK2p9L", compression=method)
        assert extract_members(data, "Qm7#vK2p9L", LIMITS).files[0].data == content


def test_lzma_member_claiming_a_4_gib_dictionary_is_read_with_a_small_one() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_LZMA) as archive:
        archive.writestr("a.txt", b"abc" * 1000)
    data = bytearray(buffer.getvalue())
    struct.pack_into("<L", data, 30 + 5 + 4 + 1, 0xFFFFFFFF)  # LZMA properties: dictionary size
    assert extract_members(bytes(data), "", LIMITS).files[0].data == b"abc" * 1000


def test_password_typed_in_japanese_is_tried_as_cp932_too() -> None:
    data = aes_zip({"a.txt": b"x" * 10}, "パス1234".encode("cp932"))
    assert prove_password(data, "パス1234")
    assert extract_members(data, "パス1234", LIMITS).files[0].data == b"x" * 10


# --- names --------------------------------------------------------------------------------------


def test_cp932_member_names_decode_even_with_0x5c_trail_bytes() -> None:
    # ソ and 表 end in byte 0x5C, the backslash: read as bytes they would split the name
    names = ["資料/表計算ソフト.xlsx", "請求書_2026年11月.pdf"]
    entries = [zipcrypto_entry(n.encode("cp932"), b"%PDF-1.4 " + n.encode(), b"pw") for n in names]
    assert b"\\" in entries[0].name
    result = extract_members(build_zip(entries), "pw", LIMITS)
    assert [f.display_name for f in result.files] == names


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/name.txt", "abs/name.txt"),
        ("C:\\x", "x"),
        ("C:x.txt", "x.txt"),
        ("..\\..\\Windows\\win.ini", "Windows/win.ini"),
        ("docs/見積書.pdf", "docs/見積書.pdf"),
        ("a/./b//c.txt", "a/b/c.txt"),
        ("\u202egpj.exe", "gpj.exe"),
        ("..", ""),
    ],
)
def test_member_names_become_display_strings_without_traversal(name: str, shown: str) -> None:
    assert display_path(name) == shown


def test_hostile_names_are_neutralised_in_extraction_and_collisions_numbered() -> None:
    names = ["../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini", "..", "x/../y.txt"]
    result = extract_members(plain_zip({n: n.encode() for n in names}), "", LIMITS)
    assert [f.display_name for f in result.files] == [
        "etc/passwd", "etc/passwd (2)", "Windows/win.ini", "file-4", "x/y.txt",
    ]
    assert all(not f.display_name.startswith(("/", "\\", "..")) for f in result.files)


def test_directories_are_skipped() -> None:
    result = extract_members(plain_zip({"docs/": b"", "docs/a.txt": b"a"}), "", LIMITS)
    assert [f.display_name for f in result.files] == ["docs/a.txt"]


def test_duplicate_names_are_refused() -> None:
    entry = zipcrypto_entry(b"a.txt", b"a", b"pw")
    twin = zipcrypto_entry(b"a.txt", b"b", b"pw")
    assert refusal(build_zip([entry, twin]), "pw") == "duplicate names"


def test_local_name_differing_from_the_central_name_is_refused() -> None:
    data = bytearray(build_zip([zipcrypto_entry(b"invoice.pdf", b"a", b"pw")]))
    data[30:41] = b"invoice.exe"
    assert refusal(bytes(data), "pw") == "corrupt"


# --- zip bombs and limits -----------------------------------------------------------------------


def test_ratio_bomb_is_refused_before_inflating() -> None:
    data = aes_zip({"zeros.bin": bytes(50 * 1024 * 1024)}, b"pw")
    assert len(data) < 100_000
    peak = measured_peak(lambda: pytest.raises(ExtractRefused, extract_members, data, "pw", LIMITS))
    assert peak < 2_000_000  # 50 MB would have been allocated had anything been inflated
    assert refusal(data, "pw") == "compression ratio over limit (zip bomb)"
    assert prove_password(data, "pw") is False  # refused archives are never proven, never raise


def test_small_highly_compressible_members_are_not_ratio_refused() -> None:
    data = aes_zip({"blank.csv": b"," * 500_000}, b"pw")  # ratio ~ 1000, but only 500 KB
    assert extract_members(data, "pw", LIMITS).files[0].size == 500_000


def test_many_entries_pointing_at_one_local_header_are_refused_as_overlapping() -> None:
    victim = zipcrypto_entry(b"a.txt", b"a" * 1000, b"pw")
    clones = [Entry(b"a.txt", victim.payload, victim.crc, victim.size, victim.flags, offset=0)
              for i in range(100)]
    assert refusal(build_zip([victim], clones), "pw") == "overlapping entries (zip bomb)"


def test_entry_whose_local_header_sits_inside_another_entrys_data_is_refused() -> None:
    inner = zipcrypto_entry(b"b.txt", b"b" * 100, b"pw")
    inner_bytes = build_zip([inner])[: 30 + 5 + len(inner.payload)]
    outer = Entry(b"a.bin", b"\0" * 10 + inner_bytes, zlib.crc32(b"\0" * 10 + inner_bytes),
                  10 + len(inner_bytes), method=0)
    inner.offset = 30 + 5 + 10  # the second central entry points into the first's data
    assert refusal(build_zip([outer], [inner]), "pw") == "overlapping entries (zip bomb)"


def test_declared_size_lie_is_stopped_by_the_running_counter() -> None:
    data = set_declared_size(aes_zip({"zeros.bin": bytes(10 * 1024 * 1024)}, b"pw"), 1000)
    peak = measured_peak(lambda: pytest.raises(ExtractRefused, extract_members, data, "pw", LIMITS))
    assert peak < 2_000_000
    assert refusal(data, "pw") == "declared size exceeded (zip bomb)"


def test_declared_size_lie_in_bzip2_member_is_stopped_too() -> None:
    compressed = aes_zip({"zeros.bin": bytes(20 * 1024 * 1024)}, b"pw", zipfile.ZIP_BZIP2)
    data = set_declared_size(compressed, 1000)
    peak = measured_peak(lambda: pytest.raises(ExtractRefused, extract_members, data, "pw", LIMITS))
    assert peak < 2_000_000


def test_declared_size_lie_under_zipcrypto_leaves_the_password_unproven() -> None:
    entry = zipcrypto_entry(b"zeros.bin", bytes(5 * 1024 * 1024), b"pw")
    entry.size = 1000
    data = build_zip([entry])
    assert prove_password(data, "pw") is False  # a lying header and a wrong key look the same
    assert refusal(data, "pw") == "wrong password"


def test_member_count_limit() -> None:
    data = plain_zip({f"{i}.txt": b"x" for i in range(5)})
    assert refusal(data, "", ExtractLimits(max_members=4)) == "too many members"
    assert len(extract_members(data, "", ExtractLimits(max_members=5)).files) == 5


def test_total_and_member_size_limits() -> None:
    data = aes_zip({"a.bin": bytes(3000), "b.bin": bytes(3000)}, b"pw")
    assert refusal(data, "pw", ExtractLimits(max_total_bytes=5000)) == "total size over limit"
    assert refusal(data, "pw", ExtractLimits(max_member_bytes=2999)) == "member size over limit"


# --- nested archives ----------------------------------------------------------------------------


def test_plain_zip_inside_is_opened_with_its_name_as_prefix() -> None:
    inner = plain_zip({"readme.txt": b"read me", "sub/data.csv": b"1,2"})
    data = aes_zip({"inner.zip": inner, "cover.txt": b"cover"}, b"pw")
    result = extract_members(data, "pw", LIMITS)
    assert {f.display_name: f.data for f in result.files} == {
        "inner.zip/readme.txt": b"read me", "inner.zip/sub/data.csv": b"1,2", "cover.txt": b"cover",
    }


def test_42_zip_style_nesting_is_refused_past_max_depth() -> None:
    nested = plain_zip({"x.txt": b"x"})
    for name in ("c.zip", "b.zip", "a.zip"):
        nested = plain_zip({name: nested})
    data = aes_zip({"outer.zip": nested}, b"pw")  # outer.zip / a.zip / b.zip / c.zip / x.txt
    assert refusal(data, "pw", ExtractLimits(max_depth=3)) == "nested too deep"
    result = extract_members(data, "pw", ExtractLimits(max_depth=4))
    assert [f.display_name for f in result.files] == ["outer.zip/a.zip/b.zip/c.zip/x.txt"]


def test_nested_members_count_against_the_same_limits() -> None:
    inner = plain_zip({f"{i}.txt": b"x" for i in range(4)})
    data = aes_zip({"inner.zip": inner}, b"pw")
    assert refusal(data, "pw", ExtractLimits(max_members=4)) == "too many members"


def test_encrypted_zip_inside_is_kept_whole_and_noted_as_double_zip() -> None:
    inner = aes_zip({"secret.txt": b"s"}, b"other")
    result = extract_members(aes_zip({"inner.zip": inner}, b"pw"), "pw", LIMITS)
    assert [(f.display_name, f.data) for f in result.files] == [("inner.zip", inner)]
    assert result.notes == ("double ZIP: inner.zip",)


# --- garbage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"PK", b"PK\x03\x04" + bytes(100), b"%PDF-1.4\n", bytes(1000)])
def test_not_a_zip_is_refused_as_corrupt(data: bytes) -> None:
    assert refusal(data, "pw") == "corrupt"


def test_encrypted_member_shorter_than_its_encryption_header_is_corrupt() -> None:
    entry = Entry(b"a.txt", b"\x01" * 5, 0, 0, flags=0x1)  # ZipCrypto needs 12 header bytes
    assert prove_password(build_zip([entry]), "pw") is False
    assert refusal(build_zip([entry]), "pw") == "corrupt"


def test_unsupported_compression_method_is_refused() -> None:
    entry = Entry(b"a.bin", b"\0" * 20, 0, 20, method=9)  # Deflate64
    assert refusal(build_zip([entry]), "pw") == "unsupported compression method 9"


def test_damaged_copies_of_real_archives_are_refused_or_extracted_never_crash() -> None:
    generator = random.Random(2026)
    originals = [
        (corpus("01_aes256_7zip_ja.zip"), "Qm7#vK2p9L"),
        (corpus("02_zipcrypto_infozip_ascii.zip"), "h4Tn9xWe"),
        (corpus("10_eicar_zipcrypto.zip"), "infected"),
    ]
    for _ in range(150):
        original, password = generator.choice(originals)
        damaged = bytearray(original)
        for _ in range(generator.randint(1, 4)):
            damaged[generator.randrange(len(damaged))] = generator.randrange(256)
        if generator.random() < 0.3:
            damaged = damaged[: generator.randrange(len(damaged))]
        assert prove_password(bytes(damaged), password) in (True, False)
        try:
            extract_members(bytes(damaged), password, LIMITS)
        except ExtractRefused:
            pass


# --- streaming into a store: the archive read in place, each member stored as it inflates -----


def stored_archive(store, data: bytes):
    info = store.write([data])
    return store.view(info.blob_id, info.wrapped_key)


def test_members_stream_from_a_stored_zip_into_the_store_holding_a_chunk_not_a_member(tmp_path):
    store = BlobStore(tmp_path / "blobs", bytes(32))
    mostly_a = bytes(0x61 if value < 252 else 0x62 + (value & 3) for value in range(256))
    member = random.Random(7).randbytes(20 * 1024 * 1024).translate(mostly_a)  # deflates 1:19
    with stored_archive(store, aes_zip({"big.bin": member}, b"pw")) as archive:
        result = None

        def extract():
            nonlocal result
            result = extract_members_into(archive, "pw", LIMITS, BlobSink(store))

        peak = measured_peak(extract)
    (extracted,) = result.files
    with store.open(extracted.kept.blob_id, extracted.kept.wrapped_key) as reader:
        assert hashlib.sha256(b"".join(reader)).digest() == hashlib.sha256(member).digest()
    assert (extracted.size, extracted.sha256) == (len(member), hashlib.sha256(member).hexdigest())
    assert peak < 2 * 1024 * 1024  # before streaming: the member and its pieces, 40 MiB


def test_a_zip_inside_is_opened_from_its_stored_blob_which_then_goes(tmp_path):
    store = BlobStore(tmp_path / "blobs", bytes(32))
    inner = plain_zip({"a.txt": b"alpha", "b/c.txt": b"gamma"})
    with stored_archive(store, aes_zip({"inner.zip": inner, "d.txt": b"delta"}, b"pw")) as archive:
        result = extract_members_into(archive, "pw", LIMITS, BlobSink(store))
    names = {f.display_name: f.kept for f in result.files}
    assert set(names) == {"inner.zip/a.txt", "inner.zip/b/c.txt", "d.txt"}
    with store.open(names["inner.zip/b/c.txt"].blob_id,
                    names["inner.zip/b/c.txt"].wrapped_key) as reader:
        assert b"".join(reader) == b"gamma"
    # the archive itself, and one blob per file: the inner ZIP's own blob was deleted
    assert len(list(store.iter_blob_ids())) == 1 + 3


def test_a_refusal_half_way_leaves_nothing_stored(tmp_path):
    store = BlobStore(tmp_path / "blobs", bytes(32))
    inner = plain_zip({"x.txt": b"x"})
    deep = plain_zip({"inner.zip": plain_zip({"deeper.zip": plain_zip({"y.zip": inner})})})
    archive_data = aes_zip({"first.txt": b"stored before the refusal", "nest.zip": deep}, b"pw")
    with stored_archive(store, archive_data) as archive:
        with pytest.raises(ExtractRefused, match="nested too deep"):
            extract_members_into(archive, "pw", LIMITS, BlobSink(store))
        with pytest.raises(ExtractRefused, match="wrong password"):
            extract_members_into(archive, "not it", LIMITS, BlobSink(store))
    assert len(list(store.iter_blob_ids())) == 1  # the archive alone
