"""The sample corpus (tests/corpus): its mails with their envelopes, and its files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


@dataclass
class Corpus:
    raw: bytes
    side: dict

    @property
    def mail_from(self) -> str:
        return self.side["envelope"]["mail_from"]

    @property
    def rcpt_tos(self) -> list[str]:
        return self.side["envelope"]["rcpt_to"]


def corpus_mail(name: str) -> Corpus:
    side = json.loads((CORPUS / "mail" / f"{name}.json").read_text(encoding="utf-8"))
    return Corpus((CORPUS / "mail" / f"{name}.eml").read_bytes(), side)
