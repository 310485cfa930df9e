"""The DKIM body hash (RFC 6376 3.4.4 and 3.7, "relaxed"), computed a chunk at a time.

dkimpy splits the whole message into a list of lines and runs four regular expressions over the
body, each making a copy: several times a large copy's size, once per copy signed. Relaxed body
canonicalisation is local to each line except for the empty lines at the end, so it can be done
on chunks that end at a line end, holding back a run of empty lines until a line with content
follows (or the body ends, and they are dropped). Same rules, same order as dkimpy's
canonicalization.py, so the hash is the one dkimpy would compute (tests compare the two).
"""

from __future__ import annotations

import base64
import hashlib
import re

from gateway.wire import line_pieces

CHUNK = 1024 * 1024
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP = re.compile(rb"[\t ]+")


def relaxed_body_hash(message: bytes, start: int, chunk: int = CHUNK) -> bytes:
    """base64 of SHA-256 over the relaxed canonical form of the body `message[start:]`, whose
    line ends are CRLF only (the signer makes them so): the value of the bh= tag. At most a
    chunk and a line are copied at a time."""
    digest = hashlib.sha256()
    held = b""  # line ends not yet known to be followed by content
    content = False
    for position, stop in line_pieces(message, start, chunk):
        canonical = _WSP.sub(b" ", _TRAILING_WSP.sub(b"\r\n", message[position:stop]))
        text = canonical.rstrip(b"\r\n")
        if text:
            digest.update(held)
            digest.update(text)
            held, content = canonical[len(text):], True
        else:
            held += canonical
    if content:
        digest.update(b"\r\n")  # the last line's end; the empty lines after it are ignored
    return base64.b64encode(digest.digest())
