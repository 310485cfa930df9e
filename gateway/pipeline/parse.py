"""Parse the raw DATA bytes into a MIME tree, and address parts in it by path.

We parse with the compat32 policy: it keeps header values as they arrived, so parts we do
not touch serialise back close to their original bytes. Paths are tuples of indices from
the root through each container's payload list (a message/rfc822 part holds one message,
index 0), so a stage can name a part without holding a reference into someone else's tree.
"""

from __future__ import annotations

import email.policy
from email.message import Message
from email.parser import BytesParser
from typing import Iterator

# Deeper trees than this are not walked for attachments (and cannot hit the recursion limit).
MAX_DEPTH = 50

_POLICY = email.policy.compat32


class UnparseableMessage(ValueError):
    """The standard library's parser itself failed on this input."""


def parse_message(raw: bytes) -> Message:
    """Parse DATA bytes. Malformed MIME is recorded as defects on the parts; the few inputs on
    which the standard library itself crashes (e.g. `boundary*0=a; boundary*=b`, a CPython
    bug) raise UnparseableMessage so the caller can decide."""
    try:
        return BytesParser(policy=_POLICY).parsebytes(raw)
    except (TypeError, AttributeError, IndexError, LookupError, RecursionError) as error:
        raise UnparseableMessage(f"{type(error).__name__}: {error}") from error


def children(part: Message) -> list[Message]:
    """The sub-parts of a multipart or message/* part, else an empty list."""
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def walk_with_paths(
    root: Message, max_depth: int = MAX_DEPTH
) -> Iterator[tuple[tuple[int, ...], Message]]:
    """Yield (path, part) depth-first, root first, without recursion."""
    stack: list[tuple[tuple[int, ...], Message]] = [((), root)]
    while stack:
        path, part = stack.pop()
        yield path, part
        if len(path) >= max_depth:
            continue
        kids = children(part)
        for index in range(len(kids) - 1, -1, -1):
            stack.append((path + (index,), kids[index]))


def part_at(root: Message, path: tuple[int, ...]) -> Message:
    part = root
    for index in path:
        part = children(part)[index]
    return part
