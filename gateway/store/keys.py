"""Load the master keys: the current one (from the environment or its key file, created once)
and the retired ones a rotation still needs, as one KeyRing.

Key file format: the standard base64 encoding of the 32 key bytes as one line of ASCII
text (44 characters and a newline), so an operator can back it up or move it into the
environment variable unchanged. The file must be a regular file with mode 0600 or
stricter; a group- or world-accessible key file is refused rather than silently used.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

KEY_SIZE = 32
# A key file is 45 bytes; reading more than this means it is not a key file.
_MAX_KEY_FILE_SIZE = 4096


class MasterKeyError(Exception):
    """The master key is missing, unreadable, malformed or too widely readable."""


@dataclass(frozen=True)
class KeyRing:
    """The keys of one use during a rotation: the `current` one makes (seals, wraps, signs,
    hashes); reading tries it first, then each `retired` one. The master keys are a ring, and
    so is each key derived from them (`derive`). Never printed: repr shows only the count."""

    current: bytes
    retired: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        for key in (self.current, *self.retired):
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                size = len(key) if isinstance(key, bytes) else type(key).__name__
                raise ValueError(f"a key must be {KEY_SIZE} bytes, got {size}")
        if self.current in self.retired:
            raise ValueError("a retired key is the current key")
        if len(set(self.retired)) != len(self.retired):
            raise ValueError("a retired key is given twice")

    @property
    def all(self) -> tuple[bytes, ...]:
        """Every key, the current one first: the order to try them in."""
        return (self.current, *self.retired)

    def derive(self, purpose: str) -> KeyRing:
        """The ring of keys for `purpose` (derive_key), one per key of this ring, in its order."""
        return KeyRing(derive_key(self.current, purpose),
                       tuple(derive_key(key, purpose) for key in self.retired))

    def __repr__(self) -> str:
        return f"KeyRing(current, {len(self.retired)} retired)"


def key_ring(keys: KeyRing | bytes) -> KeyRing:
    """`keys` as a ring: one key alone is a ring with nothing retired."""
    return keys if isinstance(keys, KeyRing) else KeyRing(keys)


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(f"{where}: master key is not valid base64") from exc
    if len(key) != KEY_SIZE:
        raise MasterKeyError(f"{where}: master key must be {KEY_SIZE} bytes, got {len(key)}")
    return key


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot open master key file: {exc.strerror}") from exc
    try:
        # fstat on the open descriptor: the file checked is the file read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"{path}: master key file is not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise MasterKeyError(f"{path}: master key file must be mode 0600, is {mode:04o}")
        raw = os.read(fd, _MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise MasterKeyError(f"{path}: cannot read master key file: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(raw) > _MAX_KEY_FILE_SIZE:
        raise MasterKeyError(f"{path}: master key file is too large to be a key")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MasterKeyError(f"{path}: master key is not valid base64") from exc
    return _decode(text, str(path))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_key_file(path: Path) -> None:
    """Write a fresh key to `path` so that the file appears complete or not at all.

    The key goes to an O_EXCL temp file (0600) that is fsynced, then hard-linked to the
    final name: unlike rename, link never replaces a key another process made first.
    Raises FileExistsError if such a key already exists.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    text = base64.b64encode(secrets.token_bytes(KEY_SIZE)) + b"\n"
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load_or_create_master_key(path: Path, env_value: str | None, may_create: bool = True) -> bytes:
    """The master key: from `env_value` (base64) if given, else from `path`, created if absent
    and `may_create` (false once data encrypted under some key exists)."""
    if env_value is not None:
        return _decode(env_value, "master key from the environment")
    if not os.path.lexists(path) and not may_create:
        raise MasterKeyError(
            f"{path}: master key file is missing but stored data exists; restore the key"
            " (a new key could not decrypt what is stored)"
        )
    if not os.path.lexists(path):
        try:
            _create_key_file(path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as exc:
            raise MasterKeyError(f"{path}: cannot create master key file: {exc.strerror}") from exc
    return _read_key_file(path)


# Retired keys in one environment variable: base64 keys separated by commas or white space.
_KEY_SEPARATORS = re.compile(r"[\s,]+")


def load_retired_master_keys(files: tuple[Path, ...], env_value: str | None) -> tuple[bytes, ...]:
    """The retired master keys: each of `files` (key files, as the current one's), then each
    key in `env_value`. A file that is missing is refused: what it sealed would not open."""
    keys = [_read_key_file(path) for path in files]
    for number, text in enumerate(_KEY_SEPARATORS.split((env_value or "").strip()), start=1):
        if text:
            keys.append(_decode(text, f"retired master key {number} from the environment"))
    return tuple(keys)


def master_key_ring(current: bytes, retired: tuple[bytes, ...]) -> KeyRing:
    """The master keys as one ring; MasterKeyError if a retired key is the current one or is
    given twice (a rotation that never happened, or a copy-and-paste slip)."""
    try:
        return KeyRing(current, retired)
    except ValueError as error:
        raise MasterKeyError(f"retired master keys: {error}") from None


# The purpose of the key that keys the hashes of generated download passwords (passwords.py).
DOWNLOAD_PASSWORD_KEY = "download password v1"
# The purpose of the portal's secret: CSRF tokens, session and "verified" cookies, code MACs.
PORTAL_SECRET = "portal v1"


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """A separate 32-byte key for one purpose (e.g. signing portal sessions), so that the
    master key itself only ever wraps data keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"ppap-gateway {purpose}".encode()
    ).derive(master_key)
