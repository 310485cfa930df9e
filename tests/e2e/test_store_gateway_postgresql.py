"""A real gateway whose metadata is on PostgreSQL (storage.database = postgresql://…): a PPAP mail
gets its 250, its recipient a notice with a link, and the link downloads the original file; the
transfer, its link and the download are rows of the PostgreSQL database, and no SQLite file is
made. Then the gateway is restarted on the same database and the link still works."""

from __future__ import annotations

import hashlib

from tests.support.portal_http import download_once
from tests.support.postgres import raw_rows
from tests.support.received import links_in
from tests.support.running import corpus_mail, send_corpus


def test_a_ppap_mail_is_converted_and_its_link_downloads_with_the_store_on_postgresql(
    start_gateway, sink, postgres_dsn, tmp_path,
) -> None:
    mail = corpus_mail("01_outlook_jis_aes256")
    attachment = mail.side["attachments"][0]
    running = start_gateway(document={"storage": {"database": postgres_dsn}})

    assert send_corpus(running.port, mail)[0] == 250
    notices = sink.wait_for(len(mail.rcpt_tos))
    tokens = sorted({token for notice in notices for token in links_in(notice.data)})
    assert len(tokens) == len(mail.rcpt_tos)
    body = download_once(running, tokens[0])
    assert hashlib.sha256(body).hexdigest() == attachment["sha256"]

    assert raw_rows(postgres_dsn, "SELECT state FROM transfers") == [("active",)]
    assert sorted(raw_rows(postgres_dsn, "SELECT download_count FROM links")) == \
        sorted([(1,)] + [(0,)] * (len(tokens) - 1))
    assert ("download",) in raw_rows(postgres_dsn, "SELECT kind FROM events")
    assert not list((tmp_path / "data").glob("*.sqlite3*")), "no SQLite file beside it"

    running.stop()
    again = start_gateway(document={"storage": {"database": postgres_dsn}})
    assert download_once(again, tokens[-1]) == body


def test_with_files_in_the_database_nothing_but_the_database_holds_the_transfer(
    start_gateway, sink, postgres_dsn, tmp_path,
) -> None:
    """storage.blobs = "database": the sealed file is rows of blob_chunks, the data directory
    holds no blob, and the link downloads the original."""
    mail = corpus_mail("01_outlook_jis_aes256")
    attachment = mail.side["attachments"][0]
    running = start_gateway(document={"storage": {"database": postgres_dsn, "blobs": "database"}})

    assert send_corpus(running.port, mail)[0] == 250
    notices = sink.wait_for(len(mail.rcpt_tos))
    token = sorted({token for notice in notices for token in links_in(notice.data)})[0]
    assert hashlib.sha256(download_once(running, token)).hexdigest() == attachment["sha256"]

    stored = raw_rows(postgres_dsn, "SELECT count(*) FROM blobs WHERE committed_at IS NOT NULL")
    assert stored[0][0] >= 1
    assert raw_rows(postgres_dsn, "SELECT count(*) FROM blob_chunks")[0][0] >= stored[0][0]
    blob_files = [path for path in (tmp_path / "data").rglob("*") if path.is_file()
                  and len(path.name) == 32]
    assert blob_files == [], "no blob file in the data directory"
