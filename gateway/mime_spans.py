"""A MIME part whose body stays where it arrived: a span of the received bytes, made into a
string only while something reads it as one.

The parser is given a token for each large leaf body (gateway.mime.parse_message); the part it
makes for one then keeps the span instead of a copy. Reading `_payload` (what get_payload(),
the generator and set_payload() use) gives the same string the parser would have made, made
anew each time and let go after; readers that can take bytes (gateway.mime's decoders) read
the span itself. A deep copy shares the span (bytes are immutable), so every recipient's copy
of a tree costs nothing for its large bodies until it is written out.
"""

from __future__ import annotations

from email.message import Message


class SpanPart(Message):
    """compat32's Message, with `_payload` a property so that a body can be a span."""

    @property
    def _payload(self):  # noqa: D401 - the attribute compat32 reads and writes
        held = self.__dict__
        span = held.get("_body_span")
        if span is not None:
            raw, start, end = span
            return str(memoryview(raw)[start:end], "ascii", "surrogateescape")
        return held.get("_payload_value")

    @_payload.setter
    def _payload(self, value) -> None:
        self.__dict__["_body_span"] = None  # a body set by anyone replaces the span
        self.__dict__["_payload_value"] = value

    def keep_span(self, raw: bytes, start: int, end: int) -> None:
        """Make raw[start:end] this part's body, as the parser would read it."""
        self.__dict__["_payload_value"] = None
        self.__dict__["_body_span"] = (raw, start, end)

    def is_multipart(self) -> bool:
        return self.__dict__.get("_body_span") is None and super().is_multipart()


def body_view(part: Message) -> memoryview | None:
    """The bytes of a body kept as a span, without a copy; None for any other body."""
    span = part.__dict__.get("_body_span") if isinstance(part, SpanPart) else None
    if span is None:
        return None
    raw, start, end = span
    return memoryview(raw)[start:end]


def body_span(part: Message) -> tuple[bytes, int, int] | None:
    """(raw, start, end) of a body kept as a span; None for any other body."""
    return part.__dict__.get("_body_span") if isinstance(part, SpanPart) else None
