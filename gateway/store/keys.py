"""Load the 32-byte master key from the environment or its key file, creating the file once.

Key file format: the standard base64 encoding of the 32 key bytes as one line of ASCII
text (44 characters and a newline), so an operator can back it up or move it into the
environment variable unchanged. The file must be a regular file with mode 0600 or
stricter; a group- or world-accessible key file is refused rather than silently used.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

KEY_SIZE = 32
# A key file is 45 bytes; reading more than this means it is not a key file.
_MAX_KEY_FILE_SIZE = 4096


class MasterKeyError(Exception):
    """The master key is missing, unreadable, malformed or too widely readable."""


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


# The purpose of the key that keys the hashes of generated download passwords (passwords.py).
DOWNLOAD_PASSWORD_KEY = "download password v1"


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """A separate 32-byte key for one purpose (e.g. signing portal sessions), so that the
    master key itself only ever wraps data keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"ppap-gateway {purpose}".encode()
    ).derive(master_key)
