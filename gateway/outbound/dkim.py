"""DKIM-sign the messages the gateway rewrote, with the keys of the From domain.

A rewritten message no longer matches the sender's own signature, so the gateway signs it
again (relaxed/relaxed) for the From domain when it holds a key for that domain.
Signing is done by dkimpy; this module picks the keys and feeds them in dkimpy's formats, and
hashes the body itself, a chunk at a time (dkim_body.py).
The signature time (t=) comes from an injectable clock, so that a signature is reproducible.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Callable, Sequence

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from gateway.outbound.dkim_body import relaxed_body_hash
from gateway.outbound.dkim_keys import ALGORITHMS, dns_name, private_key_algorithm
from gateway.wire import crlf_line_endings

log = logging.getLogger(__name__)

SIGNED_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "reply-to",
)  # fmt: skip
_HEADER_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:", re.MULTILINE)


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_key: bytes  # PEM
    algorithm: str = "rsa-sha256"  # | "ed25519-sha256"

    def __post_init__(self) -> None:
        dns_name(self.domain, "domain")
        dns_name(self.selector, "selector")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown DKIM algorithm {self.algorithm!r}")
        found = private_key_algorithm(self.private_key)
        if found != self.algorithm:
            raise ValueError(f"the key is for {found}, but algorithm is {self.algorithm}")


@dataclass(frozen=True)
class _SigningKey:
    domain: bytes
    selector: bytes
    secret: bytes  # in the form dkimpy's sign() takes for the algorithm
    algorithm: bytes
    rsa_key: rsa.RSAPrivateKey | None  # an RSA key as `cryptography` signs with it


class _DKIMAt(dkim.DKIM):
    """dkimpy's signer with the signature time, the body hash and the RSA signing given:
    dkimpy takes a timestamp for ARC seals only, hashes the body it is given after splitting
    the whole message into lines (several times a large copy's size), and computes RSA in
    Python (about 6.5 ms a signature here; `cryptography`, about 0.25 ms). It is given the
    header section only; t= and bh= are set in the tag list that gen_header() then folds,
    hashes and signs; an RSA key signs the header hash through `cryptography` (PKCS #1 v1.5
    is deterministic: the same bytes dkimpy would write). Everything else is dkimpy's."""

    def __init__(self, header_section: bytes, *, timestamp: int, body_hash: bytes,
                 rsa_key: rsa.RSAPrivateKey | None = None, **options) -> None:
        super().__init__(header_section, **options)
        self._tags = {b"t": str(timestamp).encode("ascii"), b"bh": body_hash}
        self._rsa_key = rsa_key

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, *args,
                   **kwargs):
        fields[:] = [(tag, self._tags.get(tag, value)) for tag, value in fields]
        if self._rsa_key is None or self.signature_algorithm != b"rsa-sha256":
            return super().gen_header(fields, include_headers, canon_policy, header_name, pk,
                                      *args, **kwargs)
        # dkimpy's digest-signing branch (its ed25519 one: pk.sign(digest).signature), with
        # an RSA signer; a= is already in `fields`, and the hash is SHA-256 either way
        self.signature_algorithm = b"ed25519-sha256"
        try:
            return super().gen_header(fields, include_headers, canon_policy, header_name,
                                      _RsaDigestSigner(self._rsa_key), *args, **kwargs)
        finally:
            self.signature_algorithm = b"rsa-sha256"


@dataclass(frozen=True)
class _Signature:
    signature: bytes


@dataclass(frozen=True)
class _RsaDigestSigner:
    """Signs a SHA-256 digest with RSASSA-PKCS1-v1_5, shaped as dkimpy's ed25519 key is."""

    key: rsa.RSAPrivateKey

    def sign(self, digest: bytes) -> _Signature:
        return _Signature(self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())))


class DkimSigner:
    def __init__(
        self, keys: Sequence[DkimKey], *, clock: Callable[[], datetime] | None = None
    ) -> None:
        """`clock` gives the signature time (default: now); tests pass a fixed one."""
        self._clock = clock
        self._by_domain: dict[str, list[_SigningKey]] = {}
        for key in keys:
            domain = dns_name(key.domain, "domain")
            self._by_domain.setdefault(domain, []).append(
                _SigningKey(
                    domain.encode("ascii"),
                    dns_name(key.selector, "selector").encode("ascii"),
                    dkimpy_private_key(key.private_key),
                    key.algorithm.encode("ascii"),
                    _rsa_key(key.private_key),
                )
            )

    def domains(self) -> set[str]:
        return set(self._by_domain)

    def sign(self, data: bytes) -> bytes:
        """data with one DKIM-Signature per key of its From domain prepended; unchanged if none."""
        # dkimpy splits lines on LF only; a receiver reads bare CR and LF as CRLF.
        message = crlf_line_endings(data)
        body_start = _body_start(message)
        header = message[:body_start]  # all that is read of the message but its body hash
        keys = self._by_domain.get(_from_domain(header) or "", [])
        if not keys:
            return data
        include = _headers_to_sign(header)
        timestamp = int(self._clock().timestamp() if self._clock else time.time())
        body_hash = relaxed_body_hash(message, body_start)  # every key hashes with SHA-256
        signatures = []
        for key in keys:
            try:
                # As dkim.sign() does it, with our signature time and body hash.
                signer = _DKIMAt(header, timestamp=timestamp, body_hash=body_hash,
                                 rsa_key=key.rsa_key, signature_algorithm=key.algorithm)
                signatures.append(
                    signer.sign(
                        key.selector,
                        key.domain,
                        key.secret,
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=include,
                    )
                )
            except (dkim.DKIMException, IndexError, ValueError) as error:
                # dkimpy's reader fails on malformed headers (IndexError on a leading
                # continuation line): such a message goes out unsigned rather than not at all.
                log.warning("DKIM signing for %s failed: %s", key.domain.decode(), error)
        return b"".join(signatures) + message


def dkimpy_private_key(pem: bytes) -> bytes:
    """The key in the form dkimpy's sign() takes for its algorithm."""
    loaded = serialization.load_pem_private_key(pem, password=None)
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        # dkimpy hands ed25519 keys to PyNaCl: the raw 32-byte seed, base64.
        seed = loaded.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(seed)
    # dkimpy reads PKCS#1 or PKCS#8 PEM with LF line ends.
    return loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _rsa_key(pem: bytes) -> rsa.RSAPrivateKey | None:
    loaded = serialization.load_pem_private_key(pem, password=None)
    return loaded if isinstance(loaded, rsa.RSAPrivateKey) else None


def _headers_to_sign(header: bytes) -> list[bytes]:
    """Each listed header once per occurrence, plus From once more so none can be added."""
    present = [name.lower() for name in _HEADER_NAME.findall(header)]
    names = [name.encode() for name in SIGNED_HEADERS for _ in range(present.count(name.encode()))]
    return names + [b"from"]


def _from_domain(header: bytes) -> str | None:
    """The one domain of the From field of a header section (given the whole message, the
    parser would split the body into lines too: eight times a large copy's size)."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(header)
    value = headers.get("From")
    if value is None:
        return None
    domains = {
        _normal_domain(address.rpartition("@")[2])
        for _, address in getaddresses([str(value)])
        if "@" in address
    }
    # No mailbox, or mailboxes of several domains: no single domain speaks for the message.
    return domains.pop() if len(domains) == 1 else None


def _body_start(message: bytes) -> int:
    """Where dkimpy's reader starts the body of a CRLF message: after its first empty line
    (the end, if it has none)."""
    if message.startswith(b"\r\n"):
        return 2
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end + 4


def _normal_domain(domain: str) -> str:
    return domain.strip().rstrip(".").lower()
