"""Real corpus mail through a real gateway to a real sink, over sockets."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import replace
from email.parser import BytesHeaderParser
from email.policy import compat32

import dkim
import pytest

from gateway.outbound.dkim_keys import generate_dkim_key
from gateway.store.passwords import hash_token
from tests.support.received import assert_no_zip_bytes, links_in, texts_of
from tests.support.running import CORPUS, corpus_mail, send_corpus


def stored_bytes(running, file_row) -> bytes:
    return b"".join(running.gateway.blobs.open(file_row.blob_id, file_row.wrapped_key))


@pytest.mark.parametrize("name", ["01_outlook_jis_aes256", "02_thunderbird_rfc2231_longname",
                                  "09a_ppap1_outlook_zip", "27_eicar_in_encrypted_zip"])
def test_encrypted_zip_leaves_as_one_personal_link_per_recipient(name, sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(name)
    code, text = send_corpus(running.port, mail)
    assert code == 250, text
    received = sink.wait_for(len(mail.rcpt_tos))
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(mail.rcpt_tos)
    attachment = mail.side["attachments"][0]
    zip_bytes = (CORPUS / attachment["corpus_file"]).read_bytes()
    tokens = []
    for message in received:
        assert len(message.rcpt_tos) == 1
        assert_no_zip_bytes(message.data, zip_bytes)
        found = links_in(message.data)
        assert len(found) == 1, "each copy carries exactly its own link"
        tokens.extend(found)
        assert attachment["filename"] in "".join(texts_of(message.data))
    assert len(set(tokens)) == len(mail.rcpt_tos)

    db = running.db
    links = [db.link_by_token_hash(hash_token(t)) for t in tokens]
    assert all(link is not None and link.state == "active" for link in links)
    assert {link.recipient for link in links} == set(mail.rcpt_tos)
    (file_row,) = db.files_of(links[0].transfer_id)
    assert file_row.display_name == attachment["filename"]
    assert file_row.sha256 == attachment["sha256"]
    assert hashlib.sha256(stored_bytes(running, file_row)).hexdigest() == attachment["sha256"]


@pytest.mark.parametrize("name", ["13_no_attachment", "20_unencrypted_zip", "29_plain_pdf"])
def test_mail_without_encrypted_zip_passes_byte_identical(name, sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail(name)
    code, text = send_corpus(running.port, mail)
    assert code == 250, text
    (received,) = sink.wait_for(1)
    assert received.data == mail.raw
    assert received.rcpt_tos == mail.rcpt_tos


def test_mixed_recipients_internal_copy_identical_externals_each_own_link(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail("12_mixed_recipients")
    code, text = send_corpus(running.port, mail)
    assert code == 250, text
    internal = [r for r in mail.rcpt_tos if r.endswith("@city.example.lg.jp")]
    external = [r for r in mail.rcpt_tos if r not in internal]
    received = sink.wait_for(1 + len(external))
    originals = [m for m in received if m.data == mail.raw]
    assert len(originals) == 1 and sorted(originals[0].rcpt_tos) == sorted(internal)
    rewritten = [m for m in received if m.data != mail.raw]
    assert sorted(m.rcpt_tos[0] for m in rewritten) == sorted(external)
    tokens = [links_in(m.data) for m in rewritten]
    assert all(len(t) == 1 for t in tokens) and len(set().union(*tokens)) == len(external)
    # The Bcc (the sender's own, as Outlook sends it) is in the envelope only: no header names
    # it, so looking for a Bcc: line could never fail. What can: each external copy goes to its
    # recipient alone, under the original's header fields, none added, dropped or changed but
    # our X-PPAP-Gateway.
    original_headers = header_fields(mail.raw)
    for message in rewritten:
        assert len(message.rcpt_tos) == 1
        assert header_fields(message.data) == [*original_headers, ("X-PPAP-Gateway", "converted")]


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The top-level header fields as (name, unfolded value), in order."""
    head = BytesHeaderParser(policy=compat32).parsebytes(data)
    return [(name, re.sub(r"\r?\n[ \t]", " ", value)) for name, value in head.items()]


def test_external_bcc_recipient_gets_own_link_and_stays_hidden(sink, start_gateway):
    running = start_gateway()
    mail = corpus_mail("01_outlook_jis_aes256")
    hidden = "auditor@other.example.net"
    code, text = send_corpus(running.port, replace(mail, side={
        **mail.side, "envelope": {**mail.side["envelope"], "rcpt_to": mail.rcpt_tos + [hidden]}}))
    assert code == 250, text
    received = sink.wait_for(3)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(mail.rcpt_tos + [hidden])
    for message in received:
        assert len(links_in(message.data)) == 1
        assert hidden.encode() not in message.data


def keygen_cli(tmp_path, selector: str, algorithm: str) -> tuple[str, bytes]:
    """Run `ppap-gateway dkim-keygen` as an admin would; return the key path and the TXT value
    exactly as the printed zone line gives it (its quoted strings joined)."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "dkim-keygen", "--domain", "city.example.lg.jp",
         "--selector", selector, "--out", str(tmp_path / "dkim"), "--algorithm", algorithm],
        capture_output=True, text=True, timeout=60, check=True,
    )
    (key_path,) = (tmp_path / "dkim").glob(f"{selector}.*")
    return str(key_path), "".join(re.findall(r'"([^"]*)"', result.stdout)).encode()


def test_converted_mail_is_dkim_signed_and_verifies_against_printed_records(
    tmp_path, sink, start_gateway
):
    rsa_key, rsa_record = keygen_cli(tmp_path, "rsa2026", "rsa-sha256")
    ed_key, ed_record = keygen_cli(tmp_path, "ed2026", "ed25519-sha256")
    records = {b"rsa2026._domainkey.city.example.lg.jp.": rsa_record,
               b"ed2026._domainkey.city.example.lg.jp.": ed_record}
    running = start_gateway({"dkim": {"keys": [
        {"domain": "city.example.lg.jp", "selector": "rsa2026", "key_file": rsa_key},
        {"domain": "city.example.lg.jp", "selector": "ed2026", "key_file": ed_key,
         "algorithm": "ed25519-sha256"},
    ]}})
    mail = corpus_mail("01_outlook_jis_aes256")
    assert send_corpus(running.port, mail)[0] == 250

    def dns(name, timeout=5):
        return records[name]

    for message in sink.wait_for(2):
        assert message.data.startswith(b"DKIM-Signature:")
        verifier = dkim.DKIM(message.data)
        assert [verifier.verify(idx=i, dnsfunc=dns) for i in range(2)] == [True, True]
        tampered = message.data.replace(b"/d/", b"/e/", 1)
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            dkim.DKIM(tampered).verify(idx=0, dnsfunc=dns)


def test_plain_mail_is_not_signed_even_with_a_key(tmp_path, sink, start_gateway):
    key = generate_dkim_key("city.example.lg.jp", "s1", tmp_path / "dkim")
    running = start_gateway({"dkim": {"keys": [{
        "domain": "city.example.lg.jp", "selector": "s1", "key_file": str(key.key_path),
    }]}})
    mail = corpus_mail("13_no_attachment")
    assert send_corpus(running.port, mail)[0] == 250
    assert sink.wait_for(1)[0].data == mail.raw
