"""Prove a password against ZIP members and decrypt their data: ZipCrypto and WinZip AES.

Cheap checks first (AES password verifier, ZipCrypto check byte), then the AES HMAC over the
whole member; the archive is read and decrypted in chunks of CHUNK bytes, so neither it nor a
member is ever held whole (the archive may be a stored blob read in place: zipentries.ZipData).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

from pyzipper.zipfile_aes import AESZipDecrypter, AESZipInfo

from gateway.unlock.zipentries import (
    AES_MAC_LENGTH,
    AES_SALT_LENGTHS,
    FLAG_DATA_DESCRIPTOR,
    ZIPCRYPTO_HEADER_LENGTH,
    ZipData,
    ZipEntry,
)

CHUNK = 64 * 1024  # compressed bytes decrypted per step


class WrongPassword(Exception):
    """This password does not open this member (or, for ZipCrypto, cannot be shown to)."""


def password_bytes(password: str) -> list[bytes]:
    """UTF-8 (7-Zip, WinZip AES), then CP932 (Japanese Windows archivers), when they differ."""
    if not password:
        return []
    encodings = [password.encode("utf-8")]
    try:
        cp932 = password.encode("cp932")
    except UnicodeEncodeError:
        return encodings
    return encodings if cp932 in encodings else encodings + [cp932]


def prove_entries(data: ZipData, entries: list[ZipEntry], secret: bytes) -> None:
    """Raise WrongPassword unless every entry passes its cheap check (and AES its MAC)."""
    for entry in entries:  # all check bytes / verifiers first: a wrong password costs nothing
        if not _header_check_passes(data, entry, secret):
            raise WrongPassword()
    for entry in entries:
        if entry.is_aes and not _aes_mac_matches(data, entry, secret):
            raise WrongPassword()


def _header_check_passes(data: ZipData, entry: ZipEntry, secret: bytes) -> bool:
    start = entry.data_start
    if entry.is_aes:
        salt_length = AES_SALT_LENGTHS[entry.info.wz_aes_strength]
        keys = _aes_keys(secret, data[start : start + salt_length])
        return hmac.compare_digest(keys[2], data[start + salt_length : start + salt_length + 2])
    header, _ = _zipcrypto_decrypt(
        data[start : start + ZIPCRYPTO_HEADER_LENGTH], _zipcrypto_keys(secret)
    )
    return header[-1] in _zipcrypto_check_bytes(entry.info)


def _aes_keys(secret: bytes, salt: bytes) -> tuple[bytes, bytes, bytes]:
    """(encryption key, MAC key, 2-byte password verifier), as WinZip AES derives them."""
    key_length = 2 * len(salt)
    material = hashlib.pbkdf2_hmac("sha1", secret, salt, 1000, 2 * key_length + 2)
    return material[:key_length], material[key_length : 2 * key_length], material[-2:]


def _aes_mac_matches(data: ZipData, entry: ZipEntry, secret: bytes) -> bool:
    """HMAC-SHA1 over the whole encrypted data, first 10 bytes: proves the key before decrypting."""
    start, end = entry.data_start, entry.data_end
    salt_length = AES_SALT_LENGTHS[entry.info.wz_aes_strength]
    _, mac_key, _ = _aes_keys(secret, data[start : start + salt_length])
    mac = hmac.new(mac_key, digestmod="sha1")
    for chunk in chunks(data, start + salt_length + 2, end - AES_MAC_LENGTH):
        mac.update(chunk)
    return hmac.compare_digest(mac.digest()[:AES_MAC_LENGTH], data[end - AES_MAC_LENGTH : end])


def _zipcrypto_check_bytes(info: AESZipInfo) -> tuple[int, ...]:
    """The high byte of the CRC; with a data descriptor, archivers use the file time's instead
    (Info-ZIP), though some keep the CRC's: accept either, the CRC check decides anyway."""
    by_crc = (info.CRC >> 24) & 0xFF
    if info.flag_bits & FLAG_DATA_DESCRIPTOR:
        return ((info._raw_time >> 8) & 0xFF, by_crc)
    return (by_crc,)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0xEDB88320 if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_CRC_TABLE = _crc_table()
# the keystream byte depends only on the low 16 bits of key 2: look it up instead of multiplying
_ZIPCRYPTO_STREAM = bytes(((k | 2) * ((k | 2) ^ 1) >> 8) & 0xFF for k in range(65536))
_ZipCryptoKeys = tuple[int, int, int]


def _zipcrypto_keys(secret: bytes) -> _ZipCryptoKeys:
    keys = (0x12345678, 0x23456789, 0x34567890)
    for byte in secret:
        keys = _zipcrypto_update(keys, byte)
    return keys


def _zipcrypto_update(keys: _ZipCryptoKeys, byte: int) -> _ZipCryptoKeys:
    key0, key1, key2 = keys
    key0 = (key0 >> 8) ^ _CRC_TABLE[(key0 ^ byte) & 0xFF]
    key1 = ((key1 + (key0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
    key2 = (key2 >> 8) ^ _CRC_TABLE[(key2 ^ (key1 >> 24)) & 0xFF]
    return key0, key1, key2


def _zipcrypto_decrypt(
    cipher: memoryview | bytes, keys: _ZipCryptoKeys
) -> tuple[bytes, _ZipCryptoKeys]:
    """Traditional PKWARE decryption; the key update is inlined because it runs once per byte."""
    key0, key1, key2 = keys
    table, stream = _CRC_TABLE, _ZIPCRYPTO_STREAM
    plain = bytearray(cipher)
    for index in range(len(plain)):
        byte = plain[index] ^ stream[key2 & 0xFFFF]
        plain[index] = byte
        key0 = (key0 >> 8) ^ table[(key0 ^ byte) & 0xFF]
        key1 = ((key1 + (key0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        key2 = (key2 >> 8) ^ table[(key2 ^ (key1 >> 24)) & 0xFF]
    return bytes(plain), (key0, key1, key2)


def decrypted_chunks(data: ZipData, entry: ZipEntry, secret: bytes) -> Iterator[bytes]:
    """The member's compressed bytes, decrypted when encrypted, in chunks."""
    start, end = entry.data_start, entry.data_end
    if not entry.encrypted:
        yield from chunks(data, start, end)
    elif entry.is_aes:
        # the password was proven (verifier and MAC) before: pyzipper only decrypts here
        header_length = AES_SALT_LENGTHS[entry.info.wz_aes_strength] + 2
        decrypter = AESZipDecrypter(entry.info, secret, data[start : start + header_length])
        for chunk in chunks(data, start + header_length, end - AES_MAC_LENGTH):
            yield decrypter.decrypt(chunk)
    else:
        keys = _zipcrypto_keys(secret)
        _, keys = _zipcrypto_decrypt(data[start : start + ZIPCRYPTO_HEADER_LENGTH], keys)
        for chunk in chunks(data, start + ZIPCRYPTO_HEADER_LENGTH, end):
            plain, keys = _zipcrypto_decrypt(chunk, keys)
            yield plain


def chunks(data: ZipData, start: int, end: int) -> Iterator[bytes]:
    """data[start:end] in pieces of at most CHUNK bytes."""
    for position in range(start, end, CHUNK):
        yield bytes(data[position : min(position + CHUNK, end)])
