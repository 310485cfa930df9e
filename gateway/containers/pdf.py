"""Whether a PDF is encrypted: an /Encrypt entry in its trailer (any password, owner-only
included)."""

from __future__ import annotations

import re

from gateway.model import ContainerReport

PDF_HEADER_WINDOW = 1024
_PDF_TAIL = 64 * 1024
_PDF_SPACE = rb"[\x00\t\n\x0c\r ]"
_PDF_LONGEST_ENTRY = 8 + 3 * 64 + 10 + 5 + 1  # the most the pattern below can span
# /Encrypt followed by an indirect reference or a dictionary; the name must end there,
# so /EncryptMetadata (a key inside the encryption dictionary) does not count
_PDF_ENCRYPT_ENTRY = re.compile(
    rb"/Encrypt(?:%s{1,64}\d{1,10}%s{1,64}\d{1,5}%s{1,64}R|%s{0,64}<<)"
    % (_PDF_SPACE, _PDF_SPACE, _PDF_SPACE, _PDF_SPACE)
)


def inspect_pdf(data: bytes) -> ContainerReport:
    # The trailer (or cross-reference stream) normally sits at the end; a linearized file or
    # one with a long appended tail has it earlier, so the rest is searched too.
    tail_start = max(0, len(data) - _PDF_TAIL)
    in_tail = _PDF_ENCRYPT_ENTRY.search(data, tail_start)
    if in_tail or _PDF_ENCRYPT_ENTRY.search(data, 0, tail_start + _PDF_LONGEST_ENTRY):
        return ContainerReport("pdf", True, "encrypted PDF (/Encrypt in the trailer)")
    return ContainerReport("pdf", False, "PDF without an /Encrypt entry")
