"""Line ends as the SMTP wire allows them: CRLF only (RFC 5321 2.3.8).

Used by the delivery stage for every copy, by the DKIM signer before it signs (so that the
signature covers exactly the bytes sent) and by the rewriter for what it serialises.
"""

from __future__ import annotations

import re

# A run of CRs before an LF is one line end: "line\r\r\n" (a CRLF file sent by a client that
# adds its own CR) must not become an empty line, which would end the header early.
_ANY_LINE_END = re.compile(rb"\r*\n|\r")


def crlf_line_endings(data: bytes) -> bytes:
    """data with every line end (CRLF, bare LF, bare CR, CRs before an LF) as one CRLF.

    Pass-through mail is promised byte-identical; this is the one exception, and only for the
    wire: a next hop that read a bare LF or CR as a line end could otherwise be made to see an
    end of data (`\\n.\\n`) that we did not (SMTP smuggling).
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data  # the usual case, told in three C-speed passes instead of a regex
    return _ANY_LINE_END.sub(b"\r\n", data)
