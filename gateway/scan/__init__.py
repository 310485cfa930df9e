"""Virus scanning of the files the gateway stores, by a clamd daemon (see clamd.py)."""

from gateway.scan.clamd import (
    ClamdAddress,
    ClamdFailure,
    ClamdScanner,
    ScanError,
    ScanResult,
    ScanUnavailable,
    parse_clamd_address,
)

__all__ = [
    "ClamdAddress",
    "ClamdFailure",
    "ClamdScanner",
    "ScanError",
    "ScanResult",
    "ScanUnavailable",
    "parse_clamd_address",
]
