"""classify: every corpus mail as its sidecar says, disguised and nested ZIPs, hostile structure."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import pyzipper
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.containers.contents import InspectionLimits
from gateway.errors import MimeLimitExceeded
from gateway.mime import MAX_DEPTH, parse_message, part_at
from gateway.model import Classification, ContainerReport, Finding, ZipVerdict
from gateway.pipeline.classify import classify, content_inspector
from gateway.pipeline.parse import MimeLimits
from tests.support.smime import self_signed

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CORPUS_MAILS = sorted(path.stem for path in (CORPUS / "mail").glob("*.eml"))
ENCRYPTED_ZIP = (CORPUS / "files" / "02_zipcrypto_infozip_ascii.zip").read_bytes()
CONTAINER_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "containers"
SHELL_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "shells"


def classify_bytes(raw: bytes) -> Classification:
    return classify(parse_message(raw))


def mime(*lines: str | bytes) -> bytes:
    """CRLF-joined lines: headers, an empty line, then the body."""
    return b"\r\n".join(line.encode() if isinstance(line, str) else line for line in lines) + b"\r\n"


def base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


def file_part(filename: str, data: bytes, content_type: str = "application/zip") -> bytes:
    return mime(
        f"Content-Type: {content_type}",
        f'Content-Disposition: attachment; filename="{filename}"',
        "Content-Transfer-Encoding: base64",
        "",
        base64_lines(data),
    )


def mixed(*parts: bytes, boundary: str = "b1") -> bytes:
    head = mime(
        "From: somu@city.example.lg.jp",
        "To: tanaka@partner.example.com",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
    )
    body = b"".join(mime(f"--{boundary}") + part for part in parts)
    return head + body + mime(f"--{boundary}--")


TEXT_PART = mime("Content-Type: text/plain; charset=utf-8", "", "本文です。")


@pytest.mark.parametrize("stem", CORPUS_MAILS)
def test_corpus_mail_classifies_as_its_sidecar_says(stem: str) -> None:
    sidecar = json.loads((CORPUS / "mail" / f"{stem}.json").read_text(encoding="utf-8"))
    expected = sidecar["attachments"]
    result = classify_bytes((CORPUS / "mail" / f"{stem}.eml").read_bytes())
    assert [a.filename for a in result.attachments] == [e["filename"] for e in expected]
    assert [a.content_type for a in result.attachments] == [e["content_type"] for e in expected]
    digests = [hashlib.sha256(a.data).hexdigest() for a in result.attachments]
    assert digests == [e["sha256"] for e in expected]
    encrypted = [a.filename for a in result.attachments if a.zip.verdict is ZipVerdict.ENCRYPTED_ZIP]
    assert encrypted == sidecar["password_protected_zips"]
    assert not result.signed_or_encrypted
    assert not any(a.inside_rfc822 for a in result.attachments)


def test_attachment_paths_locate_the_parts_in_the_tree() -> None:
    root = parse_message((CORPUS / "mail" / "01_outlook_jis_aes256.eml").read_bytes())
    (attachment,) = classify(root).attachments
    assert part_at(root, attachment.path).get_content_type() == "application/x-zip-compressed"


def test_encrypted_zip_disguised_as_pdf_is_found() -> None:
    raw = mixed(TEXT_PART, file_part("report.pdf", ENCRYPTED_ZIP, "application/pdf"))
    (attachment,) = classify_bytes(raw).attachments
    assert (attachment.filename, attachment.content_type) == ("report.pdf", "application/pdf")
    assert attachment.zip.verdict is ZipVerdict.ENCRYPTED_ZIP


def test_encrypted_zip_inside_an_attached_message_is_found() -> None:
    inner = mixed(TEXT_PART, file_part("inner.zip", ENCRYPTED_ZIP), boundary="inner")
    wrapper = mime("Content-Type: message/rfc822", 'Content-Disposition: attachment; filename="fwd.eml"', "")
    root = parse_message(mixed(TEXT_PART, wrapper + inner))
    (attachment,) = classify(root).attachments
    assert attachment.zip.verdict is ZipVerdict.ENCRYPTED_ZIP
    assert attachment.inside_rfc822
    assert attachment.path == (1, 0, 1)
    assert part_at(root, attachment.path).get_content_type() == "application/zip"


def test_body_text_is_not_an_attachment_but_named_or_attached_text_is() -> None:
    raw = mixed(
        TEXT_PART,
        mime("Content-Type: text/html; charset=utf-8", "", "<p>本文</p>"),
        mime("Content-Type: text/plain", "Content-Disposition: attachment", "", "attached text"),
        mime('Content-Type: text/csv; name="list.csv"', "", "a,b"),
        mime('Content-Type: text/plain; name="notes.txt"', "", "named text"),
        mime("Content-Type: image/png", "Content-Disposition: inline", "", "inline image"),
    )
    result = classify_bytes(raw)
    assert [a.path for a in result.attachments] == [(2,), (3,), (4,), (5,)]
    assert [a.filename for a in result.attachments] == ["", "list.csv", "notes.txt", ""]
    assert all(a.zip.verdict is ZipVerdict.NOT_ZIP for a in result.attachments)


def test_broken_base64_does_not_raise_and_is_noted() -> None:
    broken = mime(
        "Content-Type: application/zip",
        "Content-Transfer-Encoding: base64",
        "",
        "UEsDBA=!!*=x",
    )
    result = classify_bytes(mixed(broken))
    (attachment,) = result.attachments
    assert attachment.data.startswith(b"PK\x03\x04")
    assert attachment.zip.verdict is ZipVerdict.CORRUPT_ZIP
    assert "part 0: InvalidBase64CharactersDefect" in result.notes


def test_base64_cut_to_a_bad_length_is_decoded_as_far_as_it_goes() -> None:
    # the stdlib returns the base64 text itself when its length is 1 mod 4
    whole = base64.b64encode(ENCRYPTED_ZIP)[:-200]
    broken = mime("Content-Type: application/zip", "Content-Transfer-Encoding: base64", "", whole + b"!!!not*base64***")
    result = classify_bytes(mixed(broken))
    (attachment,) = result.attachments
    kept = len(whole) // 4 * 3
    assert attachment.data[:kept] == ENCRYPTED_ZIP[:kept]
    assert attachment.zip.verdict is ZipVerdict.ENCRYPTED_ZIP
    assert "part 0: InvalidBase64LengthDefect" in result.notes


def test_unknown_charset_in_a_filename_does_not_raise() -> None:
    part = mime(
        "Content-Type: application/octet-stream",
        "Content-Disposition: attachment; filename=\"=?x-unknown?B?6KaL?=.zip\"; filename*=x-bogus''%E8%A6%8B",
        "",
        "data",
    )
    (attachment,) = classify_bytes(mixed(part)).attachments
    assert attachment.filename == "見"


def test_empty_attachment_has_empty_data() -> None:
    raw = mixed(mime("Content-Type: application/zip", 'Content-Disposition: attachment; filename="e.zip"', ""))
    (attachment,) = classify_bytes(raw).attachments
    assert attachment.data == b""
    assert attachment.zip.verdict is ZipVerdict.NOT_ZIP


@pytest.fixture(scope="module")
def signer() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    return self_signed()


def with_headers(body: bytes) -> bytes:
    return mime("From: somu@city.example.lg.jp", "To: tanaka@partner.example.com", "Subject: test") + body


def test_smime_detached_signature_sets_signed_or_encrypted(signer) -> None:
    cert, key = signer
    content = mixed(TEXT_PART, file_part("a.zip", ENCRYPTED_ZIP))
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    result = classify_bytes(with_headers(signed))
    assert result.signed_or_encrypted
    assert any(a.zip.verdict is ZipVerdict.ENCRYPTED_ZIP for a in result.attachments)  # still reported


def test_smime_opaque_signed_data_sets_signed_or_encrypted(signer) -> None:
    cert, key = signer
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(TEXT_PART)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [])
    )
    opaque = mime(
        "MIME-Version: 1.0",
        'Content-Type: application/x-pkcs7-mime; smime-type=signed-data; name="smime.p7m"',
        "Content-Transfer-Encoding: base64",
        "",
        base64_lines(der),
    )
    assert classify_bytes(with_headers(opaque)).signed_or_encrypted


def test_smime_enveloped_data_is_opaque_not_a_file(signer) -> None:
    cert, _ = signer
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(TEXT_PART).add_recipient(cert)
    enveloped = builder.encrypt(serialization.Encoding.SMIME, [])
    result = classify_bytes(with_headers(enveloped))
    assert result.signed_or_encrypted and result.opaque
    assert result.attachments == ()


def pgp_encrypted(armored: bytes) -> bytes:
    return with_headers(
        mime(
            "MIME-Version: 1.0",
            'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="pgp"',
            "",
            "--pgp",
            "Content-Type: application/pgp-encrypted",
            "",
            "Version: 1",
            "--pgp",
            'Content-Type: application/octet-stream; name="encrypted.asc"',
            "",
            armored,
            "--pgp--",
        )
    )


def test_genuine_pgp_mime_encryption_to_a_key_is_opaque() -> None:
    result = classify_bytes(pgp_encrypted((SHELL_FIXTURES / "encrypted_pubkey.asc").read_bytes()))
    assert result.opaque
    # only the control part ("Version: 1") is left, an ordinary part holding nothing
    assert [a.content_type for a in result.attachments] == ["application/pgp-encrypted"]


def test_pgp_mime_encrypted_with_a_password_is_a_file_to_convert() -> None:
    armored = (SHELL_FIXTURES / "encrypted_symmetric.asc").read_bytes()
    (_control, attachment) = classify_bytes(pgp_encrypted(armored)).attachments
    assert attachment.content is not None and attachment.content.finding is Finding.ENCRYPTED
    assert attachment.path == (1,)


def test_a_fake_pgp_mime_encryption_is_not_taken_on_trust() -> None:
    fake = b"-----BEGIN PGP MESSAGE-----\r\n\r\nhF4DAAAAAAAAAAASAQdAexample\r\n-----END PGP MESSAGE-----"
    result = classify_bytes(pgp_encrypted(fake))
    assert not result.signed_or_encrypted
    assert "encrypted.asc" in [a.filename for a in result.attachments]


def pgp_signed(signature: bytes) -> bytes:
    return with_headers(
        mime(
            "MIME-Version: 1.0",
            "Content-Type: multipart/signed; micalg=pgp-sha256;",
            ' protocol="application/pgp-signature"; boundary="sig"',
            "",
            "--sig",
            "Content-Type: text/plain; charset=utf-8",
            "",
            "本文",
            "--sig",
            'Content-Type: application/pgp-signature; name="signature.asc"',
            "",
            signature,
            "--sig--",
        )
    )


def test_a_genuine_pgp_signature_marks_the_mail_signed_and_is_no_file() -> None:
    result = classify_bytes(pgp_signed((SHELL_FIXTURES / "signature.asc").read_bytes()))
    assert result.signed and result.attachments == ()


def test_a_fake_pgp_signature_is_an_ordinary_file() -> None:
    fake = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niHUEARYIAB0WIQexample\r\n-----END PGP SIGNATURE-----"
    result = classify_bytes(pgp_signed(fake))
    assert not result.signed
    assert [a.filename for a in result.attachments] == ["signature.asc"]


def test_nesting_past_the_depth_limit_is_refused_not_skipped() -> None:
    levels = range(MAX_DEPTH + 10)
    opening = b"".join(
        mime(f'Content-Type: multipart/mixed; boundary="n{level}"', "", f"--n{level}") for level in levels
    )
    closing = b"".join(mime(f"--n{level}--") for level in reversed(levels))
    deepest = mime("Content-Type: application/zip", "", "x")
    with pytest.raises(MimeLimitExceeded, match="deeper than 50"):
        classify_bytes(mime("From: a@city.example.lg.jp") + opening + deepest + closing)


def test_multipart_without_boundary_is_noted_not_treated_as_a_file() -> None:
    raw = mime("From: a@city.example.lg.jp", "Content-Type: multipart/mixed", "", "no parts here")
    result = classify_bytes(raw)
    assert result.attachments == ()
    assert "message: NoBoundaryInMultipartDefect" in result.notes


def test_base64_encoded_attached_message_is_looked_into() -> None:
    inner = mixed(TEXT_PART, file_part("a.zip", ENCRYPTED_ZIP))
    encoded_message = mime(
        "Content-Type: message/rfc822",
        "Content-Transfer-Encoding: base64",
        "",
        base64_lines(inner),
    )
    root = parse_message(mixed(TEXT_PART, encoded_message))
    inspector = content_inspector(MimeLimits(), InspectionLimits())
    (attachment,) = classify(root, MimeLimits(), inspector).attachments
    assert attachment.content_type == "message/rfc822"
    assert attachment.content.finding is Finding.ENCRYPTED


def test_many_defects_give_a_bounded_list_of_notes() -> None:
    broken = [
        mime("Content-Type: application/zip", "Content-Transfer-Encoding: base64", "", f"QQ!x{index}")
        for index in range(200)
    ]
    notes = classify_bytes(mixed(*broken)).notes
    assert len(notes) == 21
    assert notes[-1].startswith("and ") and notes[-1].endswith(" more notes")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"garbage without headers",
        b"\x00\xff" * 1000,
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n====",
        b'Content-Type: application/zip; name="\xff\xfe"\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n'
        b"begin 644 a\r\n!!!\r\n",
    ],
)
def test_odd_messages_classify_without_raising(raw: bytes) -> None:
    assert isinstance(classify_bytes(raw), Classification)


def test_wide_message_with_many_parts_classifies_in_linear_time() -> None:
    root = parse_message(mixed(*[mime("Content-Type: application/octet-stream", "", "x")] * 20_000))
    started = time.perf_counter()
    result = classify(root, MimeLimits(max_parts=30_000))
    assert time.perf_counter() - started < 60  # hang guard (quadratic took minutes), not a speed target
    assert len(result.attachments) == 20_000


def test_password_protected_docx_sent_as_octet_stream_under_a_misleading_name_is_found() -> None:
    docx = (CONTAINER_FIXTURES / "encrypted.docx").read_bytes()
    raw = mixed(TEXT_PART, file_part("議事録メモ.txt", docx, "application/octet-stream"))
    (attachment,) = classify_bytes(raw).attachments
    assert (attachment.filename, attachment.content_type) == ("議事録メモ.txt", "application/octet-stream")
    assert attachment.zip.verdict is ZipVerdict.NOT_ZIP
    assert attachment.container is not None
    assert (attachment.container.kind, attachment.container.encrypted) == ("office", True)


def test_attachments_that_are_no_zip_get_a_container_report_and_zips_get_none() -> None:
    plain_pdf = (CORPUS / "files" / "12a_plain.pdf").read_bytes()
    seven_zip = (CONTAINER_FIXTURES / "encrypted_header.7z").read_bytes()
    raw = mixed(
        TEXT_PART,
        file_part("a.pdf", plain_pdf, "application/pdf"),
        file_part("b.7z", seven_zip, "application/x-7z-compressed"),
        file_part("c.zip", ENCRYPTED_ZIP),
        file_part("d.bin", b"just bytes", "application/octet-stream"),
    )
    containers = [a.container for a in classify_bytes(raw).attachments]
    assert containers[0] == ContainerReport("pdf", False, "PDF without an /Encrypt entry")
    assert containers[1] is not None and (containers[1].kind, containers[1].encrypted) == ("7z", True)
    assert containers[2] is None
    assert containers[3] == ContainerReport("none", False, "")


def zip_holding(name: str, inner: bytes, *, encrypted: bool = False) -> bytes:
    buffer = io.BytesIO()
    if encrypted:
        with pyzipper.AESZipFile(buffer, "w", encryption=pyzipper.WZ_AES) as archive:
            archive.setpassword(b"h4Tn9xWe")
            archive.writestr(name, inner)
    else:
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(name, inner)
    return buffer.getvalue()


@pytest.mark.parametrize("encrypted", [False, True])
def test_zip_inside_a_zip_is_flagged_and_noted_for_the_log(encrypted: bool) -> None:
    outer = zip_holding("inner.zip", ENCRYPTED_ZIP, encrypted=encrypted)
    result = classify_bytes(mixed(TEXT_PART, file_part("見積書.zip", outer), file_part("b.zip", ENCRYPTED_ZIP)))
    first, second = result.attachments
    assert first.zip.nested_zip_names == ("inner.zip",)
    assert second.zip.nested_zip_names == ()
    assert "double-zip: 見積書.zip" in result.notes
    assert not any("b.zip" in note for note in result.notes)


def test_unnamed_double_zip_is_noted_by_its_part() -> None:
    outer = zip_holding("data.bin", ENCRYPTED_ZIP)  # found by its bytes, not its name
    part = mime("Content-Type: application/zip", "Content-Transfer-Encoding: base64", "", base64_lines(outer))
    assert "double-zip: part 1" in classify_bytes(mixed(TEXT_PART, part)).notes


def test_corpus_mails_carry_no_double_zip() -> None:
    for stem in CORPUS_MAILS:
        result = classify_bytes((CORPUS / "mail" / f"{stem}.eml").read_bytes())
        assert all(a.zip.nested_zip_names == () for a in result.attachments)
        assert not any(note.startswith("double-zip") for note in result.notes)


def test_an_archive_inside_a_genuine_signature_part_is_not_passed_over(signer) -> None:
    """A genuine signature is no file, but its unsigned attributes can carry any octets:
    what they carry is looked at like everything else."""
    from asn1crypto import cms, core

    cert, key = signer
    der = (pkcs7.PKCS7SignatureBuilder().set_data(TEXT_PART).add_signer(cert, key, hashes.SHA256())
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature]))
    info = cms.ContentInfo.load(der)
    info["content"]["signer_infos"][0]["unsigned_attrs"] = cms.CMSAttributes([cms.CMSAttribute(
        {"type": "1.2.3.4.5", "values": [core.OctetString(ENCRYPTED_ZIP)]})])
    raw = with_headers(mime(
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; boundary="s"', "",
        "--s", TEXT_PART, "--s", "Content-Type: application/pkcs7-signature",
        "Content-Transfer-Encoding: base64", "", base64_lines(info.dump(force=True)), "--s--"))
    result = classify(parse_message(raw), MimeLimits(), content_inspector(MimeLimits(), InspectionLimits()))
    assert result.signed
    assert any("signature" in reason for reason in result.uninspectable)
