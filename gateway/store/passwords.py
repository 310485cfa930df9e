"""Make and check download passwords and link tokens, storing only what cannot reveal them.

Password hash formats (self-describing, so parameters can change without a migration):

    scrypt$n=<N>,r=<r>,p=<p>$<salt, base64url>$<hash, base64url>   passwords people chose
    hmac-sha256$<salt, base64url>$<mac, base64url>                  passwords we generated

A password people chose (SMTP AUTH users) may be guessable, so it gets a slow hash. A download
password the gateway generated is random (at least 47 bits, 70 by default) and is keyed with a
key derived from the master key, which the database never holds: a leaked database gives
nothing to guess against, and whoever also holds the master key can decrypt the stored files
themselves, so a slow hash would protect nothing more. It costs microseconds instead of the
~100 ms of scrypt for every converted message.

Passwords are NFC-normalised first so the same visible text hashes the same whichever
way an input method composed it. Tokens are 192-bit random values, so a plain SHA-256
is enough to keep them from being usable if the database leaks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata

_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_SIZE = 16
_HASH_SIZE = 32
# Refuse stored parameters that would make one verification cost more than this.
_MAX_SCRYPT_N = 2**17
_MAX_SCRYPT_R = 16
_MAX_SCRYPT_P = 4

# Letters and digits without the look-alikes 0/O, 1/l/I.
_KEYED_SCHEME = "hmac-sha256"
PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(pw: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # surrogatepass: a lone surrogate from a lax decoder hashes instead of raising
    secret = unicodedata.normalize("NFC", pw).encode("utf-8", "surrogatepass")
    # scrypt needs about 128*n*r bytes; hashlib's default ceiling is 32 MiB.
    return hashlib.scrypt(
        secret, salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p + 2**20, dklen=length
    )


def hash_password(pw: str) -> str:
    salt = secrets.token_bytes(_SALT_SIZE)
    digest = _scrypt(pw, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _HASH_SIZE)
    params = f"n={_SCRYPT_N},r={_SCRYPT_R},p={_SCRYPT_P}"
    return f"scrypt${params}${_b64(salt)}${_b64(digest)}"


def hash_generated_password(pw: str, key: bytes) -> str:
    """For a password the gateway generated itself; `key` comes from the master key."""
    salt = secrets.token_bytes(_SALT_SIZE)
    return f"{_KEYED_SCHEME}${_b64(salt)}${_b64(_keyed(pw, salt, key))}"


def _keyed(pw: str, salt: bytes, key: bytes) -> bytes:
    secret = unicodedata.normalize("NFC", pw).encode("utf-8", "surrogatepass")
    return hmac.new(key, salt + secret, hashlib.sha256).digest()


def _parse_params(text: str) -> tuple[int, int, int]:
    fields = dict(item.split("=", 1) for item in text.split(","))
    n, r, p = int(fields["n"]), int(fields["r"]), int(fields["p"])
    if not (2 <= n <= _MAX_SCRYPT_N and n & (n - 1) == 0):
        raise ValueError("bad n")
    if not (1 <= r <= _MAX_SCRYPT_R and 1 <= p <= _MAX_SCRYPT_P):
        raise ValueError("bad r or p")
    return n, r, p


def is_keyed_hash(stored: str) -> bool:
    """Whether `stored` is the keyed hash of a generated password (needs a key to check)."""
    return stored.startswith(_KEYED_SCHEME + "$")


def verify_password(pw: str, stored: str, key: bytes | None = None,
                    retired_keys: tuple[bytes, ...] = ()) -> bool:
    """True if `pw` matches `stored`; False for a mismatch or a malformed stored value, and
    for a keyed hash when no `key` is given. A keyed hash made before a master-key rotation
    matches under one of `retired_keys` (tried after `key`)."""
    if is_keyed_hash(stored):
        return key is not None and any(
            _verify_keyed(pw, stored, each) for each in (key, *retired_keys))
    try:
        scheme, params, salt_text, hash_text = stored.split("$")
        if scheme != "scrypt":
            return False
        n, r, p = _parse_params(params)
        salt, expected = _unb64(salt_text), _unb64(hash_text)
    except (ValueError, KeyError, binascii.Error):
        return False
    if not 16 <= len(expected) <= 64:
        return False
    return hmac.compare_digest(_scrypt(pw, salt, n, r, p, len(expected)), expected)


def _verify_keyed(pw: str, stored: str, key: bytes) -> bool:
    try:
        _, salt_text, mac_text = stored.split("$")
        salt, expected = _unb64(salt_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        return False
    return len(expected) == 32 and hmac.compare_digest(_keyed(pw, salt, key), expected)


def new_token() -> str:
    """A link token: 192 random bits, base64url (32 characters)."""
    return secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def generate_password(length: int = 12) -> str:
    """A random password easy to read aloud or retype (about 5.8 bits per character)."""
    if length < 1:
        raise ValueError("password length must be at least 1")
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
