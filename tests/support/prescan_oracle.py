"""The pre-scan's oracle: for one message, compare classify's shortcut
(gateway.pipeline.classify.classify_raw) with the full way (parse_and_classify) and say what
is wrong. Shared by the property test (tests/unit/test_prescan.py) and the fuzzer
(tests/fuzz/runner.py), so that both keep checking the same promise: what the shortcut vouches
for, the full classifier finds nothing in, and a limit refuses a message the same way on both.
"""

from __future__ import annotations

from gateway.containers.base import InspectionLimit, InspectionTimedOut
from gateway.containers.contents import InspectionLimits
from gateway.errors import StructureLimitExceeded, UnparseableMessage
from gateway.mime import decoded_body, header_bytes
from gateway.model import Classification
from gateway.pipeline.classify import classify_raw, content_inspector, parse_and_classify
from gateway.pipeline.parse import MimeLimits
from gateway.pipeline.prescan import plain_text
from gateway.wire import crlf_line_endings

REFUSALS = (StructureLimitExceeded, UnparseableMessage, InspectionLimit, InspectionTimedOut)
NOTHING = Classification(attachments=())


def as_framed(data: bytes) -> bytes | None:
    """The bytes as the frame stage hands them on (CRLF), or None where it refuses (NUL)."""
    return None if b"\x00" in data else crlf_line_endings(data)


def check(raw: bytes, limits: MimeLimits = MimeLimits(),
          inspection: InspectionLimits = InspectionLimits()) -> tuple[bool, list[str]]:
    """(whether the shortcut vouched for raw, what it got wrong), with an inspector and
    without one (mail for recipients inside only)."""
    problems: list[str] = []
    vouched = False
    for inspected in (True, False):
        def inspector():
            return content_inspector(limits, inspection) if inspected else None
        fast, fast_error = _outcome(lambda: classify_raw(raw, limits, inspector())[1])
        full, full_error = _outcome(lambda: parse_and_classify(raw, limits, inspector()))
        where = "with inspector" if inspected else "without inspector"
        if fast_error is not None:  # a limit: the full way must refuse it alike
            if _shown(fast_error) != _shown(full_error):
                problems.append(f"{where}: shortcut {_shown(fast_error)}, full way {_shown(full_error)}")
            continue
        if fast is None:
            continue  # not vouched for: the stage goes the full way, refusals and all
        vouched = vouched or inspected
        if full_error is not None:
            problems.append(f"{where}: vouched for, but the full way refuses: {_shown(full_error)}")
            continue
        message, classification = full
        if classification != NOTHING:
            problems.append(f"{where}: vouched for, but the full way found {classification}")
        plain = plain_text(raw)
        if plain.header != header_bytes(message) or plain.body != decoded_body(message):
            problems.append(f"{where}: header or body differ from the parsed message's")
    return vouched, problems


def _outcome(run):
    try:
        return run(), None
    except REFUSALS as error:
        return None, error


def _shown(error: Exception | None) -> str:
    return "no refusal" if error is None else f"{type(error).__name__}: {error}"
