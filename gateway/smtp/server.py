"""The SMTP listener: aiosmtpd's protocol in our own event loop, with our reply texts.

aiosmtpd answers a few conditions with fixed texts and no enhanced status code; we map those
to the replies in gateway.replies so that a 5xx names its reason the way MTAs expect.
"""

from __future__ import annotations

import asyncio
import ssl

from aiosmtpd.smtp import SMTP

from gateway.config import SmtpSettings
from gateway.replies import LINE_TOO_LONG, MESSAGE_TOO_BIG

_FIXED_REPLIES = {
    "552 Error: Too much mail data": MESSAGE_TOO_BIG.render(),
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG.render(),
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG.render(),
}


class GatewaySMTP(SMTP):
    def __init__(self, handler, *, line_length_limit: int, **kwargs):
        # Read by SMTP.__init__ for the stream limit; real clients do send long lines.
        self.line_length_limit = line_length_limit
        super().__init__(handler, **kwargs)

    async def push(self, status: str) -> None:
        await super().push(_FIXED_REPLIES.get(status, status))


def make_tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


async def start_smtp_server(
    handler, settings: SmtpSettings, hostname: str, authenticator=None
) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    tls_context = make_tls_context(settings)

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            line_length_limit=settings.max_line_length,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="ppap-gateway",
            tls_context=tls_context,
            timeout=settings.timeout.total_seconds(),
            authenticator=authenticator,
            auth_require_tls=True,
            # Without a users file there is nobody to authenticate: offer no mechanism.
            auth_exclude_mechanism=None if authenticator else ("LOGIN", "PLAIN"),
            loop=loop,
        )

    return await loop.create_server(factory, host=settings.listen_host, port=settings.listen_port)
