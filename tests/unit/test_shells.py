"""read_cms, is_detached_pkcs7_signature, read_pgp: real gpg, OpenSSL and cryptography output
is recognised; fakes, truncations and hostile lengths are not, and nothing raises."""

from __future__ import annotations

import base64
import io
import random
import zipfile
import zlib
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.containers.base import InspectionLimit
from gateway.containers.shells import (
    CmsReport,
    PgpReport,
    is_detached_pkcs7_signature,
    read_cms,
    read_pgp,
)
from tests.support.smime import self_signed

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "shells"
MAX_OUTPUT = 1 << 20
CONTENT = b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xe8\xa6\x8b\xe7\xa9\x8d\xe6\x9b\xb8\r\n"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def crc24(data: bytes) -> int:
    """RFC 4880 section 6.1, bit by bit (independent of the table the module uses)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(label: str, packets: bytes, *, checksum: int | None = -1, headers: str = "") -> bytes:
    """ASCII armor as GnuPG writes it; checksum -1 computes the right one, None leaves it out."""
    encoded = base64.b64encode(packets).decode()
    lines = [f"-----BEGIN PGP {label}-----", *filter(None, headers.split("\n")), ""]
    lines += [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    if checksum is not None:
        value = crc24(packets) if checksum == -1 else checksum
        lines.append("=" + base64.b64encode(value.to_bytes(3, "big")).decode())
    lines.append(f"-----END PGP {label}-----")
    return ("\n".join(lines) + "\n").encode()


def dearmored(name: str) -> bytes:
    lines = fixture(name).decode().splitlines()
    body = [line for line in lines[2:-1] if not line.startswith("=")]
    return base64.b64decode("".join(body))


# --- real S/MIME made here with cryptography ---


@pytest.fixture(scope="module")
def signer() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    return self_signed()


def sign(signer, options, encoding=serialization.Encoding.DER) -> bytes:
    certificate, key = signer
    builder = pkcs7.PKCS7SignatureBuilder().set_data(CONTENT).add_signer(certificate, key, hashes.SHA256())
    return builder.sign(encoding, [pkcs7.PKCS7Options.Binary, *options])


@pytest.fixture(scope="module")
def detached(signer) -> bytes:
    return sign(signer, [pkcs7.PKCS7Options.DetachedSignature])


@pytest.fixture(scope="module")
def opaque(signer) -> bytes:
    return sign(signer, [])


@pytest.fixture(scope="module")
def enveloped(signer) -> bytes:
    certificate, _ = signer
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(CONTENT).add_recipient(certificate)
    return builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def compressed(packed: bytes, algorithm: str = "zlib") -> bytes:
    """CMS compressed-data (RFC 3274) around already-compressed bytes, built with asn1crypto."""
    return cms.ContentInfo(
        {
            "content_type": "compressed_data",
            "content": cms.CompressedData(
                {
                    "version": "v0",
                    "compression_algorithm": {"algorithm": algorithm},
                    "encap_content_info": {"content_type": "data", "content": packed},
                }
            ),
        }
    ).dump()


def without_signers(signed: bytes) -> bytes:
    data = cms.ContentInfo.load(signed)["content"]
    fields = ("version", "digest_algorithms", "encap_content_info", "certificates")
    stripped = cms.SignedData({name: data[name] for name in fields} | {"signer_infos": []})
    return cms.ContentInfo({"content_type": "signed_data", "content": stripped}).dump()


# --- S/MIME (CMS) ---


def test_detached_signature_from_cryptography_is_detached(detached) -> None:
    assert is_detached_pkcs7_signature(detached)
    assert read_cms(detached, max_output=MAX_OUTPUT) == CmsReport("signed-data", None, False)


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, "base64"])
def test_detached_signature_in_pem_or_base64_is_tolerated(signer, detached, encoding) -> None:
    if encoding == "base64":
        data = base64.encodebytes(detached)  # 76-column lines, as a doubly encoded MIME part has
    else:
        data = sign(signer, [pkcs7.PKCS7Options.DetachedSignature], encoding)
        assert data.startswith(b"-----BEGIN PKCS7-----")
    assert is_detached_pkcs7_signature(data)


def test_opaque_signature_from_cryptography_carries_its_content(opaque) -> None:
    assert read_cms(opaque, max_output=MAX_OUTPUT) == CmsReport("signed-data", CONTENT, False)
    assert not is_detached_pkcs7_signature(opaque)


def test_streamed_ber_signature_from_openssl_carries_its_content() -> None:
    data = fixture("opaque_signed_ber.der")
    assert data[1] == 0x80  # indefinite length: BER, not DER
    report = read_cms(data, max_output=MAX_OUTPUT)
    assert report == CmsReport("signed-data", fixture("content.txt"), False)
    assert not is_detached_pkcs7_signature(data)


def test_enveloped_data_to_a_certificate_is_not_password_only(enveloped) -> None:
    assert read_cms(enveloped, max_output=MAX_OUTPUT) == CmsReport("enveloped-data", None, False)
    assert not is_detached_pkcs7_signature(enveloped)


def test_password_enveloped_data_from_openssl_is_password_only() -> None:
    report = read_cms(fixture("password_enveloped.der"), max_output=MAX_OUTPUT)
    assert report == CmsReport("enveloped-data", None, True)


def test_one_certificate_recipient_among_passwords_is_not_password_only(enveloped) -> None:
    password_info = cms.ContentInfo.load(fixture("password_enveloped.der"))["content"]
    data = cms.ContentInfo.load(enveloped)["content"]
    mixed = cms.EnvelopedData(
        {
            "version": "v3",
            "recipient_infos": [*password_info["recipient_infos"], *data["recipient_infos"]],
            "encrypted_content_info": data["encrypted_content_info"],
        }
    )
    mixed_der = cms.ContentInfo({"content_type": "enveloped_data", "content": mixed}).dump()
    assert read_cms(mixed_der, max_output=MAX_OUTPUT) == CmsReport("enveloped-data", None, False)


def test_enveloped_data_without_recipients_is_refused() -> None:
    data = cms.ContentInfo.load(fixture("password_enveloped.der"))["content"]
    fields = {"version": "v3", "encrypted_content_info": data["encrypted_content_info"]}
    empty = cms.EnvelopedData(fields | {"recipient_infos": []})
    der = cms.ContentInfo({"content_type": "enveloped_data", "content": empty}).dump()
    assert read_cms(der, max_output=MAX_OUTPUT) is None


def test_authenticated_enveloped_data_from_openssl() -> None:
    report = read_cms(fixture("auth_enveloped.der"), max_output=MAX_OUTPUT)
    assert report == CmsReport("authenticated-enveloped-data", None, False)


def test_compressed_data_is_decompressed() -> None:
    data = compressed(zlib.compress(CONTENT))
    assert read_cms(data, max_output=MAX_OUTPUT) == CmsReport("compressed-data", CONTENT, False)
    assert read_cms(data, max_output=len(CONTENT)) == CmsReport("compressed-data", CONTENT, False)


def test_compressed_data_expanding_past_the_bound_raises_inspection_limit() -> None:
    bomb = compressed(zlib.compress(bytes(20 * MAX_OUTPUT), 9))
    assert len(bomb) < 30_000
    with pytest.raises(InspectionLimit) as raised:
        read_cms(bomb, max_output=MAX_OUTPUT)
    assert str(MAX_OUTPUT) in raised.value.reason
    assert raised.value.reason.isascii()
    with pytest.raises(InspectionLimit):
        read_cms(compressed(zlib.compress(CONTENT)), max_output=len(CONTENT) - 1)


@pytest.mark.parametrize(
    "packed",
    [
        zlib.compress(CONTENT)[:-3],  # stream cut short
        zlib.compress(CONTENT) + b"junk",  # bytes after the stream
        b"not zlib at all",
        b"",
    ],
)
def test_broken_compressed_data_is_refused(packed: bytes) -> None:
    assert read_cms(compressed(packed), max_output=MAX_OUTPUT) is None


def test_compressed_data_with_another_algorithm_is_refused() -> None:
    assert read_cms(compressed(zlib.compress(CONTENT), "1.2.3.4"), max_output=MAX_OUTPUT) is None


def test_signed_data_without_signer_infos_is_refused(detached, opaque) -> None:
    for signed in (detached, opaque):
        assert read_cms(signed, max_output=MAX_OUTPUT) is not None
        stripped = without_signers(signed)
        assert read_cms(stripped, max_output=MAX_OUTPUT) is None
        assert not is_detached_pkcs7_signature(stripped)


def test_der_sequences_that_are_no_content_info_are_refused(signer) -> None:
    certificate, _ = signer
    for data in (
        certificate.public_bytes(serialization.Encoding.DER),  # a real DER SEQUENCE, wrong type
        b"\x30\x03\x02\x01\x01",
        b"\x30\x00",
        cms.ContentInfo({"content_type": "data", "content": CONTENT}).dump(),  # ContentInfo, wrong kind
    ):
        assert read_cms(data, max_output=MAX_OUTPUT) is None
        assert not is_detached_pkcs7_signature(data)


def test_signed_data_with_a_garbled_certificate_is_refused(detached) -> None:
    certificate = cms.ContentInfo.load(detached)["content"]["certificates"][0].dump()
    # Certificate SEQUENCE, TBSCertificate SEQUENCE (both long form), [0] version, then the serial
    serial_tag = detached.index(certificate) + 4 + 4 + 5
    assert detached[serial_tag - 5 : serial_tag + 1] == b"\xa0\x03\x02\x01\x02\x02"
    garbled = detached[:serial_tag] + b"\x04" + detached[serial_tag + 1 :]  # INTEGER -> OCTET STRING
    assert is_detached_pkcs7_signature(detached)
    assert not is_detached_pkcs7_signature(garbled)


def test_every_truncation_of_real_cms_is_refused(detached, opaque, enveloped) -> None:
    openssl_made = fixture("opaque_signed_ber.der"), fixture("password_enveloped.der")
    for data in (detached, opaque, enveloped, *openssl_made):
        for end in range(len(data)):
            assert read_cms(data[:end], max_output=MAX_OUTPUT) is None
            assert not is_detached_pkcs7_signature(data[:end])


def test_trailing_bytes_after_cms_are_refused(detached) -> None:
    assert read_cms(detached + b"\x00", max_output=MAX_OUTPUT) is None
    assert not is_detached_pkcs7_signature(detached + b"\x00")


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x84\xff\xff\xff\xff\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02",
        b"\x30\x88" + b"\xff" * 8,
        b"\x30\xff" + bytes(200),
        b"\x30\x80" * 5000,  # nested indefinite lengths, never closed
        b"\x30\x80" * 5000 + b"\x00\x00" * 5000,  # ... and closed: deeper than asn1crypto recurses
    ],
)
def test_huge_declared_lengths_and_depths_in_cms_are_refused(data: bytes) -> None:
    assert read_cms(data, max_output=MAX_OUTPUT) is None
    assert not is_detached_pkcs7_signature(data)


# --- OpenPGP ---


@pytest.mark.parametrize(
    ("name", "report"),
    [
        ("signature.asc", PgpReport("signature", False)),
        ("signature.sig", PgpReport("signature", False)),
        ("encrypted_pubkey.asc", PgpReport("encrypted", False)),
        ("encrypted_symmetric.asc", PgpReport("encrypted", True)),
        ("encrypted_symmetric.gpg", PgpReport("encrypted", True)),
        ("encrypted_symmetric_partial.gpg", PgpReport("encrypted", True)),
        ("encrypted_pubkey_and_password.gpg", PgpReport("encrypted", False)),
    ],
)
def test_gpg_output_gets_its_kind(name: str, report: PgpReport) -> None:
    assert read_pgp(fixture(name)) == report


def test_partial_length_fixture_really_uses_partial_lengths() -> None:
    data = fixture("encrypted_symmetric_partial.gpg")
    seipd_header = data[15:17]
    assert seipd_header[0] == 0xD2 and 224 <= seipd_header[1] < 255


def test_armor_variations_gnupg_and_others_write_are_accepted() -> None:
    packets = fixture("signature.sig")
    expected = PgpReport("signature", False)
    assert read_pgp(armor("SIGNATURE", packets, checksum=None)) == expected  # checksum is optional
    assert read_pgp(armor("SIGNATURE", packets, headers="Version: GnuPG v2\nComment: x")) == expected
    assert read_pgp(armor("SIGNATURE", packets).replace(b"\n", b"\r\n")) == expected
    assert read_pgp(b"\r\n  " + fixture("signature.asc") + b"\n\n") == expected


def test_armor_with_garbage_inside_is_refused() -> None:
    assert read_pgp(b"-----BEGIN PGP SIGNATURE-----\ngarbage\n-----END PGP SIGNATURE-----") is None
    assert read_pgp(b"-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----") is None
    assert read_pgp(armor("SIGNATURE", b"not a packet, but valid base64 of it")) is None


def test_armor_with_a_wrong_checksum_is_refused() -> None:
    packets = fixture("signature.sig")
    assert read_pgp(armor("SIGNATURE", packets)) is not None
    assert read_pgp(armor("SIGNATURE", packets, checksum=crc24(packets) ^ 1)) is None
    real = fixture("signature.asc")
    footer = real.index(b"\n=") + 2
    flipped = real[:footer] + (b"A" if real[footer : footer + 1] != b"A" else b"B") + real[footer + 1 :]
    assert read_pgp(flipped) is None


def test_armor_whose_label_does_not_match_its_packets_is_refused() -> None:
    assert read_pgp(armor("MESSAGE", fixture("signature.sig"))) is None
    assert read_pgp(armor("SIGNATURE", fixture("encrypted_symmetric.gpg"))) is None
    mismatched_end = fixture("signature.asc").replace(b"END PGP SIGNATURE", b"END PGP MESSAGE")
    assert read_pgp(mismatched_end) is None
    assert read_pgp(armor("PUBLIC KEY BLOCK", fixture("signature.sig"))) is None


def test_text_after_the_armor_is_refused() -> None:
    assert read_pgp(fixture("signature.asc") + b"PK\x03\x04 and a ZIP after it\n") is None


def test_every_truncation_of_real_openpgp_is_refused() -> None:
    for name in ("signature.sig", "encrypted_pubkey_and_password.gpg",
                 "encrypted_symmetric_partial.gpg"):
        data = fixture(name)
        for end in range(len(data)):
            assert read_pgp(data[:end]) is None, (name, end)
    packets = dearmored("signature.asc")
    assert read_pgp(armor("SIGNATURE", packets[:-1])) is None


def test_trailing_bytes_after_packets_are_refused() -> None:
    assert read_pgp(fixture("signature.sig") + b"\x00") is None
    assert read_pgp(fixture("encrypted_symmetric.gpg") + fixture("signature.sig")) is None


def test_packet_sequences_outside_the_two_shapes_are_refused() -> None:
    signature = fixture("signature.sig")
    symmetric = fixture("encrypted_symmetric.gpg")
    skesk, seipd = symmetric[:15], symmetric[15:]
    assert read_pgp(signature * 3) == PgpReport("signature", False)
    assert read_pgp(skesk * 2 + seipd) == PgpReport("encrypted", True)
    assert read_pgp(seipd) is None  # data without a session key
    assert read_pgp(skesk) is None  # session key without data
    assert read_pgp(skesk + seipd + seipd) is None
    assert read_pgp(signature + skesk + seipd) is None
    assert read_pgp(skesk + signature + seipd) is None
    literal = b"\xcb\x08b\x00\x00\x00\x00\x00hi"  # a plain literal data packet
    assert read_pgp(literal) is None
    assert read_pgp(skesk + literal) is None


def test_version_octets_no_openpgp_version_defines_are_refused() -> None:
    signature = fixture("signature.sig")
    assert signature[:3] == b"\x88\x75\x04"
    assert read_pgp(signature[:2] + b"\x07" + signature[3:]) is None
    symmetric = fixture("encrypted_symmetric.gpg")
    assert symmetric[2] == 4 and symmetric[17] == 1  # SKESK v4, SEIPD v1
    assert read_pgp(symmetric[:2] + b"\x01" + symmetric[3:]) is None
    assert read_pgp(symmetric[:17] + b"\x09" + symmetric[18:]) is None


def test_old_format_indeterminate_length_only_for_data_packets() -> None:
    skesk = fixture("encrypted_symmetric.gpg")[:15]
    sed_to_the_end = b"\xa7" + bytes(range(40))  # tag 9, length type 3
    assert read_pgp(skesk + sed_to_the_end) == PgpReport("encrypted", True)
    signature_body = fixture("signature.sig")[2:]
    assert read_pgp(b"\x8b" + signature_body) is None  # a signature may not run to the end


def test_partial_lengths_only_for_data_packets() -> None:
    body = fixture("signature.sig")[2:]  # 117 octets
    assert read_pgp(bytes([0xC2, len(body)]) + body) == PgpReport("signature", False)  # new format
    assert read_pgp(bytes([0xC2, 0xE5]) + body[:32] + bytes([len(body) - 32]) + body[32:]) is None
    skesk = fixture("encrypted_symmetric.gpg")[:15]
    seipd_body = b"\x01" + bytes(299)
    # chunks of 32 and 1 octets, then the last 267 with a two-octet length (192 + 75)
    chunked = bytes([0xE5]) + seipd_body[:32] + bytes([0xE0]) + seipd_body[32:33]
    chunked += bytes([0xC0, 75]) + seipd_body[33:]
    assert read_pgp(skesk + b"\xd2" + chunked) == PgpReport("encrypted", True)
    empty_last = bytes([0xE5]) + seipd_body[:32] + bytes([0xE5]) + seipd_body[32:64] + b"\x00"
    assert read_pgp(skesk + b"\xd2" + empty_last) == PgpReport("encrypted", True)
    assert read_pgp(skesk + b"\xd2" + chunked[:-1]) is None
    assert read_pgp(skesk + b"\xd2" + bytes([0xE5]) + seipd_body[:32]) is None  # then nothing


@pytest.mark.parametrize(
    "data",
    [
        b"\x8a\xff\xff\xff\xff\x04",  # old format, four-octet length 4 GiB
        b"\xc2\xff\xff\xff\xff\xff\x04",  # new format, five-octet length
        b"\xc2\xff\xff\xff",  # five-octet length cut short
        b"\xc2\xdf",  # two-octet length cut short
        b"\x89\x01",  # two-octet old length cut short
        b"\xd2\xfe" + b"\x01" * 64,  # partial chunk of 1 GiB
        b"\xd2" + b"\xe0\x01" * 5000,  # endless one-octet partial chunks
        b"\x8c\xff" + bytes(10),  # length past the data
    ],
)
def test_huge_declared_lengths_in_openpgp_are_refused(data: bytes) -> None:
    assert read_pgp(data) is None
    assert read_pgp(armor("SIGNATURE", data)) is None


def test_packet_count_is_bounded() -> None:
    tiny_signature = b"\x88\x01\x04"
    assert read_pgp(tiny_signature * 10_000) == PgpReport("signature", False)
    assert read_pgp(tiny_signature * 10_001) is None


# --- fakes both readers refuse, and nothing raises ---


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("見積書.xlsx", b"x" * 500)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b" \r\n\t",
        zip_file(),
        base64.b64encode(zip_file()),
        b"-----BEGIN PGP SIGNATURE-----\ngarbage\n-----END PGP SIGNATURE-----",
        b"-----BEGIN PKCS7-----\ngarbage\n-----END PKCS7-----",
        "見積書".encode("cp932"),
        bytes(range(256)) * 8,
    ],
)
def test_fakes_are_refused_by_both_readers(data: bytes) -> None:
    assert read_cms(data, max_output=MAX_OUTPUT) is None
    assert not is_detached_pkcs7_signature(data)
    assert read_pgp(data) is None


def test_random_bytes_are_refused() -> None:
    generator = random.Random(20260705)
    for length in (1, 2, 3, 7, 64, 1000, 65536):
        for first in (None, 0x30, 0x88, 0xC2, 0x8C):
            data = bytearray(generator.randbytes(length))
            if first is not None:
                data[0] = first
            assert read_cms(bytes(data), max_output=MAX_OUTPUT) is None
            assert not is_detached_pkcs7_signature(bytes(data))
            assert read_pgp(bytes(data)) is None


def test_mutated_real_structures_never_raise(detached, opaque, enveloped) -> None:
    generator = random.Random(4880)
    samples = [detached, opaque, enveloped, compressed(zlib.compress(CONTENT))]
    samples += [fixture(path.name) for path in sorted(FIXTURES.iterdir()) if path.suffix != ".md"]
    for sample in samples:
        for _ in range(150):
            data = bytearray(sample)
            for _ in range(generator.randint(1, 4)):
                data[generator.randrange(len(data))] = generator.randrange(256)
            read_cms(bytes(data), max_output=MAX_OUTPUT)
            is_detached_pkcs7_signature(bytes(data))
            read_pgp(bytes(data))
