"""Make DKIM key pairs, with the DNS TXT record that publishes them, and load key files.

A key file holds one unencrypted PKCS#8 PEM private key (RSA or Ed25519), mode 0600. Its
public half goes to DNS as `{selector}._domainkey.{domain}.` TXT `v=DKIM1; k=...; p=...`.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MIN_RSA_BITS = 1024  # RFC 8301: verifiers ignore anything shorter
MAX_RSA_BITS = 4096
_TXT_STRING_MAX = 255
_MAX_KEY_FILE_BYTES = 64 * 1024
# One or more DNS labels: the selector and domain also become part of a file name.
_DNS_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


@dataclass(frozen=True)
class GeneratedKey:
    key_path: Path
    txt_name: str  # "{selector}._domainkey.{domain}."
    txt_value: str  # "v=DKIM1; k=rsa; p=..."
    zone_line: str  # the record for a zone file, value split into strings of <= 255 chars


def generate_dkim_key(
    domain: str,
    selector: str,
    out_dir: Path,
    algorithm: str = "rsa-sha256",
    bits: int = 2048,
) -> GeneratedKey:
    """Write a new private key into out_dir, never over a file, and return its DNS record."""
    domain, selector = dns_name(domain, "domain"), dns_name(selector, "selector")
    if algorithm == "rsa-sha256":
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise ValueError(f"RSA keys have {MIN_RSA_BITS}..{MAX_RSA_BITS} bits, not {bits}")
        private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=bits
        )
        kind = "rsa"
    elif algorithm == "ed25519-sha256":
        private_key = ed25519.Ed25519PrivateKey.generate()
        kind = "ed25519"
    else:
        raise ValueError(f"unknown DKIM algorithm {algorithm!r}; use {' or '.join(ALGORITHMS)}")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path = Path(out_dir) / f"{selector}._domainkey.{domain}.{kind}.pem"
    _write_private(key_path, pem)
    txt_name = f"{selector}._domainkey.{domain}."
    txt_value = public_txt_value(private_key)
    return GeneratedKey(key_path, txt_name, txt_value, zone_line(txt_name, txt_value))


def public_txt_value(private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The TXT value: RSA public key as SubjectPublicKeyInfo, Ed25519 as its raw 32 bytes."""
    public = private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def zone_line(txt_name: str, txt_value: str) -> str:
    """`name IN TXT "..." "..."`: a TXT string holds at most 255 octets."""
    chunks = [txt_value[i : i + _TXT_STRING_MAX] for i in range(0, len(txt_value), _TXT_STRING_MAX)]
    return f"{txt_name} IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


def load_private_key(path: Path) -> bytes:
    """The PEM bytes of a usable DKIM private key; ValueError says what is wrong with it."""
    with open(path, "rb") as file:
        pem = file.read(_MAX_KEY_FILE_BYTES + 1)
    if len(pem) > _MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path} is too large to be a DKIM private key")
    private_key_algorithm(pem)
    return pem


def private_key_algorithm(pem: bytes) -> str:
    """'rsa-sha256' or 'ed25519-sha256' for an unencrypted PEM private key, else ValueError."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as error:
        # TypeError is cryptography's word for an encrypted key: it needs a password we lack.
        raise ValueError(f"not a usable unencrypted PEM private key ({error})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519-sha256"
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits is shorter than {MIN_RSA_BITS}")
        return "rsa-sha256"
    raise ValueError(f"unsupported key type {type(key).__name__}; DKIM uses RSA or Ed25519")


def dns_name(value: str, what: str) -> str:
    """value lower-cased without a final dot; ValueError unless it is a plain DNS name."""
    name = value.strip().rstrip(".").lower()
    if len(name) > 253 or not _DNS_NAME.match(name):
        raise ValueError(f"{what} {value!r} is not a DNS name (letters, digits, '-', '.')")
    return name


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: a key that may already be published in DNS is never replaced by accident.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask
            file.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
