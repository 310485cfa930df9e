"""Build and send one typical PPAP mail (Japanese text, AES-encrypted ZIP) for a first try-out."""

from __future__ import annotations

import email.policy
import io
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pyzipper

SAMPLE_PASSWORD = "Sample#2026"


def build_encrypted_zip(files: dict[str, bytes], password: str = SAMPLE_PASSWORD) -> bytes:
    buffer = io.BytesIO()
    with pyzipper.AESZipFile(
        buffer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
    ) as archive:
        archive.setpassword(password.encode())
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def build_sample_message(sender: str, recipients: list[str]) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = "【送付】お見積書の件"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "localhost")
    message.set_content(
        "いつもお世話になっております。\n\n"
        "お見積書をお送りいたします。\n"
        "パスワードは別途お送りいたします。\n\n"
        "よろしくお願いいたします。\n",
        charset="utf-8",
    )
    archive = build_encrypted_zip(
        {"見積書.txt": "お見積金額: 1,000,000円\n".encode("utf-8") * 50}
    )
    message.add_attachment(
        archive, maintype="application", subtype="zip", filename="見積書_2026年11月.zip"
    )
    return message.as_bytes()


def send_sample(server: str, sender: str, recipients: list[str]) -> str:
    """Send the sample; return the server's reply to DATA as one line."""
    host, _, port = server.rpartition(":")
    data = build_sample_message(sender, recipients)
    with smtplib.SMTP(host.strip("[]") or "127.0.0.1", int(port), timeout=120) as client:
        client.ehlo("sample.localhost")
        client.mail(sender)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            if code >= 400:
                return f"{code} {text.decode(errors='replace')}"
        code, text = client.data(data)
    return f"{code} {text.decode(errors='replace')}"
