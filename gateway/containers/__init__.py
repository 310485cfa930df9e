"""Tell from an attachment's bytes whether it is an encrypted 7z, Office document or PDF,
and which members of a ZIP are ZIPs themselves.

Only the bytes decide, never the name. Nothing is decrypted and no file content is
decompressed, with two bounded exceptions: a 7z archive's own header, which 7-Zip stores
LZMA-compressed whenever it holds more than a file or two, is unpacked (at most
_MAX_7Z_HEADER bytes) because the list of coders that says "AES" lives inside it; and
the first four bytes of a deflated ZIP member are inflated to see whether it is a ZIP.
Every claimed offset, size and count is checked against the bytes present, every loop
is bounded by them, and no function here raises on hostile input.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.containers.base import Unreadable
from gateway.containers.nested import nested_zip_names
from gateway.containers.office import inspect_cfb
from gateway.containers.pdf import PDF_HEADER_WINDOW, inspect_pdf
from gateway.containers.sevenzip import inspect_7z
from gateway.model import ContainerReport

__all__ = ["inspect_container", "nested_zip_names", "NOT_A_CONTAINER"]

SEVEN_ZIP_SIGNATURE = b"7z\xbc\xaf\x27\x1c"
CFB_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
PDF_SIGNATURE = b"%PDF-"

NOT_A_CONTAINER = ContainerReport("none", False, "")


def inspect_container(data: bytes) -> ContainerReport:
    """Which encrypted container data is (7z, Office, PDF), if any, and whether it is encrypted."""
    if data.startswith(SEVEN_ZIP_SIGNATURE):
        return _guarded("7z", inspect_7z, data)
    if data.startswith(CFB_SIGNATURE):
        return _guarded("office", inspect_cfb, data)
    # readers accept a little junk (a mail client's stray bytes) before the PDF header
    if data.find(PDF_SIGNATURE, 0, PDF_HEADER_WINDOW) >= 0:
        return inspect_pdf(data)
    return NOT_A_CONTAINER


def _guarded(kind: str, inspect: Callable[[bytes], ContainerReport], data: bytes) -> ContainerReport:
    # A structure we cannot read gets no "encrypted" verdict: encryption is only reported
    # where the bytes show it.
    try:
        return inspect(data)
    except Unreadable as problem:
        return ContainerReport(kind, False, f"unreadable: {problem}")
