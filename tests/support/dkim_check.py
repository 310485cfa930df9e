"""DKIM as a receiver checks it: the TXT records a generated key publishes, served from a dict
instead of DNS, and dkimpy's verdict on every signature of a message; plus a signer for such keys
and the rewritten corpus mail the signing tests sign."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dkim

from gateway.config import BUNDLED_TEMPLATES
from gateway.outbound.dkim import DkimKey, DkimSigner
from gateway.outbound.dkim_keys import GeneratedKey, load_private_key
from gateway.pipeline.notice import Notice, NoticeFile, make_template_env, render_notice
from gateway.pipeline.rewrite import rewrite_message

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "city.example.lg.jp"


def txt_from_zone_line(line: str) -> str:
    """What a resolver hands back: the quoted strings of the record, joined."""
    return "".join(re.findall(r'"([^"]*)"', line))


def dns_for(*keys: GeneratedKey):
    records = {key.txt_name.encode(): txt_from_zone_line(key.zone_line).encode() for key in keys}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def verify_all(message: bytes, *keys: GeneratedKey) -> list[bool]:
    """dkim.verify's answer for each signature, top first (dkim.verify reads only the top one)."""
    count = len(re.findall(rb"^DKIM-Signature:", message, re.MULTILINE | re.IGNORECASE))
    return [_verify(message, index, dns_for(*keys)) for index in range(count)]


def _verify(message: bytes, index: int, dnsfunc) -> bool:
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.DKIMException:  # what dkim.verify turns into False
        return False


def signer_for(*keys: GeneratedKey, domain: str = DOMAIN) -> DkimSigner:
    return DkimSigner([dkim_key(key, domain) for key in keys])


def dkim_key(key: GeneratedKey, domain: str = DOMAIN) -> DkimKey:
    selector = key.txt_name.split(".")[0]
    algorithm = "ed25519-sha256" if key.key_path.name.endswith(".ed25519.pem") else "rsa-sha256"
    return DkimKey(domain, selector, load_private_key(key.key_path), algorithm)


def rewritten_corpus_mail() -> bytes:
    """01_outlook_jis_aes256 with its ZIP replaced by the Japanese notice, as the gateway sends it."""
    raw = (ROOT / "tests/corpus/mail/01_outlook_jis_aes256.eml").read_bytes()
    expires = datetime(2026, 12, 3, 17, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    files = (NoticeFile("見積書一式_2026年11月.zip", 6878),)
    notice = Notice("ja", files, "https://f.example/d/t0k", expires, "none")
    text, html = render_notice(make_template_env(BUNDLED_TEMPLATES), notice)
    return rewrite_message(raw, [(1,)], text, html)
