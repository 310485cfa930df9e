"""POST the gateway's webhook calls (a download password for an SMS gateway or chat), signed.

The signature scheme, for whoever writes the receiving end:

    Each call is an HTTP POST with a JSON body (UTF-8) and these headers:

        Content-Type:      application/json
        User-Agent:        ppap-gateway
        X-PPAP-Timestamp:  1795652000                      (Unix time in seconds, decimal)
        X-PPAP-Signature:  sha256=<64 lowercase hex digits>

    The signature is HMAC-SHA256 keyed with the shared secret (the bytes of the file named by
    `webhook.secret_file`, surrounding whitespace removed) over

        timestamp + "." + body

    i.e. the ASCII decimal timestamp exactly as sent in the header, one full stop, then the raw
    body bytes exactly as received (verify before parsing the JSON). Compare in constant time
    (Python: hmac.compare_digest; or call verify_signature below), and refuse a timestamp more
    than a few minutes away from your own clock, so a captured call cannot be replayed later.

    Answer 2xx once the call is taken (the gateway records it as delivered and never sends it
    again, except after a crash at the wrong instant: then the very same call may arrive twice).
    Answer 408, 429 or 5xx (or time out) to have it retried later with exponential back-off;
    any other status (401 for a bad signature, 400 for a body you cannot use, 3xx — redirects
    are not followed) makes the gateway give up and tell the sender.

The body carries a password: it never goes into a log line, a result message or an error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gateway.model import DeliveryResult

log = logging.getLogger("gateway.notify")

TIMESTAMP_HEADER = "X-PPAP-Timestamp"
SIGNATURE_HEADER = "X-PPAP-Signature"
USER_AGENT = "ppap-gateway"
_SCHEME = "sha256="
_RETRIED_STATUSES = frozenset({408, 429})
_MAX_TIMESTAMP_DIGITS = 12


@dataclass(frozen=True)
class WebhookCall:
    """One POST to make: where, and the JSON body (UTF-8)."""

    url: str
    body: bytes


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-PPAP-Signature value for a body sent at `timestamp`."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, header: str, *,
    now: float | None = None, tolerance: float = 300.0,
) -> bool:
    """True when `header` is the signature of `body` sent at `timestamp` under `secret`.

    Constant-time. With `now` (Unix seconds) also requires the timestamp to lie within
    `tolerance` seconds of it, which is what stops replays.
    """
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS):
        return False
    if now is not None and abs(now - int(timestamp)) > tolerance:
        return False
    expected = signature(secret, timestamp, body).encode("ascii")
    return hmac.compare_digest(expected, header.strip().lower().encode("utf-8", "replace"))


def _temporary(text: str) -> DeliveryResult:
    return DeliveryResult(accepted=False, code=451, message=text)


def _permanent(text: str) -> DeliveryResult:
    return DeliveryResult(accepted=False, code=550, message=text)


def result_for_status(status: int) -> DeliveryResult:
    """2xx accepted; 408, 429 and 5xx temporary; anything else (3xx, other 4xx) permanent."""
    if 200 <= status < 300:
        return DeliveryResult(accepted=True, code=250, message=f"2.0.0 webhook answered HTTP {status}")
    if status in _RETRIED_STATUSES or 500 <= status < 600:
        return _temporary(f"4.4.2 webhook answered HTTP {status}")
    return _permanent(f"5.0.0 webhook answered HTTP {status}")


class WebhookSender:
    """Makes signed webhook calls over one aiohttp session, opened on first use.

    Belongs to one event loop; call close() when done. Never raises for network trouble.
    """

    def __init__(self, secret: bytes, timeout: float, *, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("a webhook secret is required")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock  # wall-clock seconds for the timestamp the receiver checks
        self._session: aiohttp.ClientSession | None = None

    def _headers(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        return {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret, timestamp, body),
        }

    async def send(self, call: WebhookCall) -> DeliveryResult:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        try:
            # Redirects are not followed: they would re-post the password to another place.
            async with self._session.post(
                call.url, data=call.body, headers=self._headers(call.body), allow_redirects=False
            ) as response:
                status = response.status  # the answer's body is not read: we need only the status
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError):
            return _permanent("5.3.5 webhook URL is not usable")
        except TimeoutError:
            return _temporary("4.4.2 webhook timed out")
        except (aiohttp.ClientConnectionError, OSError):
            return _temporary("4.4.1 webhook unreachable")
        except aiohttp.ClientError as error:
            return _temporary(f"4.4.2 webhook call failed ({type(error).__name__})")
        result = result_for_status(status)
        log.debug("webhook call answered HTTP %d", status)
        return result

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
