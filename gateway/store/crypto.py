"""Seal and open blobs and small secrets with AES-256-GCM under the master key.

Blob layout (the design follows Tink's streaming AEAD, simplified):

    header  = b"PPGB" | version (1 byte) | chunk size (4 bytes BE) | nonce prefix (7 random bytes)
    chunk_i = AES-256-GCM(data key, nonce_i, plaintext_i, aad) = ciphertext_i | 16-byte tag
    nonce_i = nonce prefix | i (4 bytes BE) | 1 if this is the last chunk else 0
    aad     = b"ppap-gateway/blob/v1\\0" | blob id (ASCII) | header

Every chunk except the last holds exactly `chunk size` plaintext bytes; the last holds
0..chunk size (an empty blob is one empty last chunk), so the file always ends in a
chunk sealed with the last flag. Reordering, dropping, appending or altering chunks,
or editing the header, makes some chunk fail its tag.

Each blob has its own random 256-bit data key. It is wrapped with AES-256-GCM under the
master key, with the blob id as associated data, and handed back to the caller to keep
in the metadata store, never in the blob file: once the row and the file are gone, so
is every way to read the blob.

Master keys come as a KeyRing (store/keys.py; one key alone counts as a ring): wrapping and
sealing use its current key, unwrapping and opening try the current key first and then each
retired one, GCM's tag telling a wrong key, so a rotation (ops/rotate_keys.py) needs no
downtime and costs nothing while the current key fits.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Generator, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.store.keys import KeyRing, key_ring

KEY_SIZE = 32
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 64 * 1024
# A header may not make the reader allocate more than this per chunk.
MAX_CHUNK_SIZE = 16 * 1024 * 1024

_MAGIC = b"PPGB"
_VERSION = 1
_NONCE_PREFIX_SIZE = 7
_HEADER = struct.Struct(">4sBI7s")
HEADER_SIZE = _HEADER.size
_MAX_CHUNK_INDEX = 2**32 - 1

_GCM_NONCE_SIZE = 12
_SEALED_VERSION = b"\x01"
_BLOB_AAD_LABEL = b"ppap-gateway/blob/v1\x00"
_DATA_KEY_AAD_LABEL = b"ppap-gateway/data-key/v1\x00"
_SMALL_AAD_LABEL = b"ppap-gateway/small/v1\x00"


class IntegrityError(Exception):
    """Sealed bytes did not authenticate: tampered, truncated, or the wrong key or id."""


class BlobIntegrityError(IntegrityError):
    """A blob, its header or its wrapped key did not authenticate."""


class Opened(NamedTuple):
    """What a key of a ring opened, and which key did: 0 is the current key, i the i-th retired."""

    plaintext: bytes
    key_index: int


def _seal(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(_GCM_NONCE_SIZE)
    return _SEALED_VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    """Inverse of _seal; raises InvalidTag or ValueError on anything wrong."""
    head = 1 + _GCM_NONCE_SIZE
    if len(sealed) < head + TAG_SIZE or sealed[:1] != _SEALED_VERSION:
        raise ValueError("sealed value is malformed")
    return AESGCM(key).decrypt(sealed[1:head], sealed[head:], aad)


def _open_with_any(keys: KeyRing, aad: bytes, sealed: bytes) -> Opened:
    """_open with the first key of the ring that authenticates; the last InvalidTag if none."""
    for index, key in enumerate(keys.all):
        try:
            return Opened(_open(key, aad, sealed), index)
        except InvalidTag as exc:
            failure = exc
    raise failure


def seal_small(master_keys: KeyRing | bytes, aad: bytes, plaintext: bytes) -> bytes:
    """Encrypt a small secret (e.g. a download password) under the current master key, bound
    to `aad`."""
    return _seal(key_ring(master_keys).current, _SMALL_AAD_LABEL + aad, plaintext)


def open_small(master_keys: KeyRing | bytes, aad: bytes, sealed: bytes) -> bytes:
    """Decrypt what seal_small produced; IntegrityError if it or `aad` was changed."""
    return open_small_with_any(master_keys, aad, sealed).plaintext


def open_small_with_any(master_keys: KeyRing | bytes, aad: bytes, sealed: bytes) -> Opened:
    """open_small, saying which master key opened it."""
    try:
        return _open_with_any(key_ring(master_keys), _SMALL_AAD_LABEL + aad, sealed)
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError("sealed secret does not authenticate") from exc


def _blob_id_bytes(blob_id: str) -> bytes:
    return blob_id.encode("ascii")


def wrap_data_key(master_keys: KeyRing | bytes, blob_id: str, data_key: bytes) -> bytes:
    return _seal(key_ring(master_keys).current,
                 _DATA_KEY_AAD_LABEL + _blob_id_bytes(blob_id), data_key)


def unwrap_data_key(master_keys: KeyRing | bytes, blob_id: str, wrapped_key: bytes) -> bytes:
    return unwrap_data_key_with_any(master_keys, blob_id, wrapped_key).plaintext


def unwrap_data_key_with_any(master_keys: KeyRing | bytes, blob_id: str,
                             wrapped_key: bytes) -> Opened:
    """The blob's data key, and which master key wrapped it; BlobIntegrityError if none did."""
    aad = _DATA_KEY_AAD_LABEL + _blob_id_bytes(blob_id)
    try:
        opened = _open_with_any(key_ring(master_keys), aad, wrapped_key)
    except (InvalidTag, ValueError) as exc:
        raise BlobIntegrityError(f"wrapped key of blob {blob_id} does not authenticate") from exc
    if len(opened.plaintext) != KEY_SIZE:
        raise BlobIntegrityError(f"wrapped key of blob {blob_id} has the wrong length")
    return opened


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index > _MAX_CHUNK_INDEX:
        raise ValueError("blob has more chunks than the nonce can count")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class BlobEncryptor:
    """Turns plaintext fed in pieces of any size into the sealed chunks of one blob.

    Write `header` first, then everything update() returns, then finish(). At most one
    chunk of plaintext is buffered: a full chunk is held back until more data arrives,
    because only then is it known not to be the last.
    """

    def __init__(self, master_keys: KeyRing | bytes, blob_id: str,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        data_key = AESGCM.generate_key(bit_length=256)
        self.wrapped_key: bytes = wrap_data_key(master_keys, blob_id, data_key)
        self._nonce_prefix = os.urandom(_NONCE_PREFIX_SIZE)
        self.header: bytes = _HEADER.pack(_MAGIC, _VERSION, chunk_size, self._nonce_prefix)
        self._aead = AESGCM(data_key)
        self._aad = _BLOB_AAD_LABEL + _blob_id_bytes(blob_id) + self.header
        self._chunk_size = chunk_size
        self._pending = bytearray()
        self._index = 0
        self._finished = False

    def _seal_pending(self, last: bool) -> bytes:
        nonce = _chunk_nonce(self._nonce_prefix, self._index, last)
        sealed = self._aead.encrypt(nonce, self._pending, self._aad)
        self._index += 1
        self._pending.clear()
        return sealed

    def update(self, data: bytes) -> list[bytes]:
        """Take more plaintext; return the chunks it completed (possibly none)."""
        if self._finished:
            raise ValueError("encryptor already finished")
        sealed: list[bytes] = []
        view = memoryview(data)
        position = 0
        while position < len(view):
            if len(self._pending) == self._chunk_size:
                sealed.append(self._seal_pending(last=False))
            take = min(self._chunk_size - len(self._pending), len(view) - position)
            self._pending += view[position : position + take]
            position += take
        return sealed

    def finish(self) -> bytes:
        """Seal and return the last chunk; the encryptor cannot be used afterwards."""
        if self._finished:
            raise ValueError("encryptor already finished")
        self._finished = True
        return self._seal_pending(last=True)


def _read_exact(source: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at end of file (tolerates short reads)."""
    first = source.read(size)
    if len(first) == size or not first:
        return first
    parts = [first]
    missing = size - len(first)
    while missing:
        more = source.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _parse_header(blob_id: str, header: bytes) -> tuple[int, bytes]:
    if len(header) != HEADER_SIZE:
        raise BlobIntegrityError(f"blob {blob_id} is shorter than its header")
    magic, version, chunk_size, nonce_prefix = _HEADER.unpack(header)
    if magic != _MAGIC or version != _VERSION:
        raise BlobIntegrityError(f"blob {blob_id} has an unknown header")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise BlobIntegrityError(f"blob {blob_id} declares an impossible chunk size")
    return chunk_size, nonce_prefix


def decrypt_blob(
    master_keys: KeyRing | bytes, blob_id: str, wrapped_key: bytes, source: BinaryIO
) -> Generator[bytes, None, None]:
    """Yield the plaintext chunks of a sealed blob read from `source`.

    Raises BlobIntegrityError before yielding anything from a chunk that does not
    authenticate. Reads one chunk ahead to learn whether the current one is the last.
    """
    aead = AESGCM(unwrap_data_key(master_keys, blob_id, wrapped_key))
    header = _read_exact(source, HEADER_SIZE)
    chunk_size, nonce_prefix = _parse_header(blob_id, header)
    aad = _BLOB_AAD_LABEL + _blob_id_bytes(blob_id) + header
    sealed_size = chunk_size + TAG_SIZE
    current = _read_exact(source, sealed_size)
    index = 0
    while True:
        following = _read_exact(source, sealed_size) if len(current) == sealed_size else b""
        last = not following
        try:
            nonce = _chunk_nonce(nonce_prefix, index, last)
            plaintext = aead.decrypt(nonce, current, aad)
        except (InvalidTag, ValueError) as exc:
            message = f"blob {blob_id}: chunk {index} does not authenticate"
            raise BlobIntegrityError(message) from exc
        yield plaintext
        if last:
            return
        current = following
        index += 1


class SealedChunks:
    """The chunks of one sealed blob opened by index, in any order, for readers that seek (a
    ZIP's directory is at its end): each is read and authenticated when asked for, nothing kept.

    The chunk count, and so which chunk is the last, follows from the file's length; a chunk is
    bound to its index and the last-chunk flag, so a truncated or extended file fails on the
    chunk that would be its last, as it does when read in order.
    """

    def __init__(
        self, master_keys: KeyRing | bytes, blob_id: str, wrapped_key: bytes, source: BinaryIO,
        sealed_size: int,
    ):
        self._aead = AESGCM(unwrap_data_key(master_keys, blob_id, wrapped_key))
        self._blob_id = blob_id
        self._source = source
        source.seek(0)
        header = _read_exact(source, HEADER_SIZE)
        self.chunk_size, self._nonce_prefix = _parse_header(blob_id, header)
        self._aad = _BLOB_AAD_LABEL + _blob_id_bytes(blob_id) + header
        self._sealed_chunk = self.chunk_size + TAG_SIZE
        body = sealed_size - HEADER_SIZE
        self.count = max(1, -(-body // self._sealed_chunk))
        last_sealed = body - (self.count - 1) * self._sealed_chunk
        if last_sealed < TAG_SIZE:
            raise BlobIntegrityError(f"blob {blob_id} ends inside a chunk's tag")
        self.plaintext_size = (self.count - 1) * self.chunk_size + last_sealed - TAG_SIZE

    def chunk(self, index: int) -> bytes:
        """The plaintext of chunk `index`; BlobIntegrityError if it does not authenticate."""
        if not 0 <= index < self.count:
            raise IndexError(f"blob {self._blob_id} has no chunk {index}")
        self._source.seek(HEADER_SIZE + index * self._sealed_chunk)
        sealed = _read_exact(self._source, self._sealed_chunk)
        try:
            nonce = _chunk_nonce(self._nonce_prefix, index, index == self.count - 1)
            return self._aead.decrypt(nonce, sealed, self._aad)
        except (InvalidTag, ValueError) as exc:
            message = f"blob {self._blob_id}: chunk {index} does not authenticate"
            raise BlobIntegrityError(message) from exc
