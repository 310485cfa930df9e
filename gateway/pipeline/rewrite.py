"""Rewrite a message: take out the converted attachments and put the notice into its body.

Only what must change is touched: the removed parts, the body parts that get the notice
(text/plain and text/html of the top-level message) and the X-PPAP-Gateway header. Every
other header and part serialises as it arrived, as far as compat32 allows. A body part keeps
its charset and transfer encoding when they can carry the notice (ISO-2022-JP stays
ISO-2022-JP); otherwise it becomes UTF-8.
"""

from __future__ import annotations

import base64
import codecs
import email.policy
import io
import quopri
import re
import secrets
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import Message
from typing import Callable, Iterator, Sequence

from gateway.errors import RewriteError
from gateway.mime import MAX_DEPTH, children, parse_message, part_at
from gateway.mime_spans import body_span
from gateway.wire import crlf_line_endings, crlf_only

GATEWAY_HEADER = "X-PPAP-Gateway"
MAX_LINE_OCTETS = 998

# max_line_length=None: headers are written back with their original folding, never refolded.
_OUTPUT_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=None)
# compat32's parameter parser is quadratic in the number of ';': longer headers are not parsed.
_MAX_PARAM_HEADER_CHARS = 16 * 1024
_FILENAME_PARAM = re.compile(r"(?:^|;)\s*(?:file)?name\*?(?:\d+\*?)?\s*=", re.IGNORECASE)
_BODY_TAG_START = re.compile(r"<body\b", re.IGNORECASE)
_META_TAG = re.compile(r"<meta\b[^<>]*>", re.IGNORECASE)
_META_CHARSET = re.compile(r"(charset\s*=\s*[\"']?)[^\"'\s;>/]+", re.IGNORECASE)
_CHARSET_ALIASES = {"x-sjis": "shift_jis", "windows-31j": "cp932", "x-euc-jp": "euc_jp"}
# Codecs tried in order for a label: clients (Outlook above all) write extensions of the
# charset they name, and re-encoding with the codec that read the text keeps their bytes.
_DECODE_CHAINS = {
    "iso2022_jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_3"),
    "shift_jis": ("shift_jis", "cp932", "shift_jis_2004"),
    "euc_jp": ("euc_jp", "euc_jis_2004"),
}


def new_boundary() -> str:
    """A MIME boundary for a part the rewriter makes: "=_ppap_" and 32 random hex digits."""
    # "=_" cannot occur in base64 or quoted-printable lines, the only content we generate.
    return f"=_ppap_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class _NoticeTexts:
    text: str  # LF line ends, ends with one "\n"
    html: str
    boundary: Callable[[], str] = new_boundary  # a fresh boundary for each multipart we make


def rewrite_message(
    raw: bytes, remove_paths: Sequence[tuple[int, ...]], notice_text: str, notice_html: str,
    *, boundary: Callable[[], str] = new_boundary,
) -> bytes:
    """The message without the parts at remove_paths, with the notice in its body; CRLF only.
    `boundary` makes the boundary of each multipart the rewriter creates (tests pass a
    deterministic one to compare with golden files)."""
    return rewrite_parsed(parse_message(raw), remove_paths, notice_text, notice_html,
                          boundary=boundary)


def rewrite_parsed(
    root: Message, remove_paths: Sequence[tuple[int, ...]], notice_text: str, notice_html: str,
    *, boundary: Callable[[], str] = new_boundary,
) -> bytes:
    """As rewrite_message, for a tree fresh from parse_message; it is changed in place, so a
    caller that already parsed the message can spare a second parse of its last copy."""
    _check_depth(root)
    notice = _NoticeTexts(
        _lf(notice_text).strip("\n") + "\n", _lf(notice_html).strip("\n") + "\n", boundary
    )
    paths = {tuple(p) for p in remove_paths}
    # Deepest and last first, so the indices of the paths still to come stay valid.
    for path in sorted(paths, reverse=True):
        _remove(root, path, notice)
    _prune_empty_multiparts(root, notice)
    if () not in paths:  # else the whole message already is the notice
        _place_notice(root, notice)
    del root[GATEWAY_HEADER]
    root[GATEWAY_HEADER] = "converted"
    return _serialise(root)


def _check_depth(root: Message) -> None:
    stack = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RewriteError(f"MIME tree deeper than {MAX_DEPTH} levels")
        stack.extend((kid, depth + 1) for kid in children(part))


def _remove(root: Message, path: tuple[int, ...], notice: _NoticeTexts) -> None:
    if not path:
        _become_notice(root, notice)
        return
    try:
        parent = part_at(root, path[:-1])
        doomed = children(parent)[path[-1]]
    except IndexError:
        raise RewriteError(f"no MIME part at {path}") from None
    if parent.get_content_maintype() == "message":
        _become_notice(doomed, notice)  # an attached message that was nothing but the file
        return
    _drop(parent, doomed)


def _prune_empty_multiparts(root: Message, notice: _NoticeTexts) -> None:
    """A multipart left with no parts is dropped; an attached message left empty says why."""
    for _, part, parent in sorted(_multiparts(root), key=lambda item: item[0], reverse=True):
        if parent is None or children(part) or not isinstance(part.get_payload(), list):
            continue  # still has parts, or is the top level (which gets the notice part later)
        if parent.get_content_maintype() == "message":
            _become_notice(part, notice)
        else:
            _drop(parent, part)


def _multiparts(root: Message) -> Iterator[tuple[int, Message, Message | None]]:
    """(depth, multipart, its parent) for every multipart in the tree."""
    stack: list[tuple[int, Message, Message | None]] = [(0, root, None)]
    while stack:
        depth, part, parent = stack.pop()
        if part.get_content_maintype() == "multipart":
            yield depth, part, parent
        stack.extend((depth + 1, kid, part) for kid in children(part))


def _drop(parent: Message, doomed: Message) -> None:
    payload = parent.get_payload()
    payload[:] = [p for p in payload if p is not doomed]


def _place_notice(root: Message, notice: _NoticeTexts) -> None:
    bodies = list(_body_parts(root))
    for part in bodies:
        _add_notice(part, notice)
    if bodies:
        return
    if root.get_content_maintype() == "multipart" and isinstance(root.get_payload(), list):
        root.get_payload().insert(0, _notice_part(notice))
    else:
        _wrap_in_mixed(root, notice)


def _body_parts(root: Message) -> Iterator[Message]:
    """text/plain and text/html bodies of the top-level message, not of attached messages."""
    stack = [root]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() == "multipart":
            stack.extend(reversed(children(part)))
        elif part.get_content_type() in ("text/plain", "text/html") and not _is_attachment(part):
            yield part


def _is_attachment(part: Message) -> bool:
    if part.get_content_disposition() == "attachment":
        return True
    headers = (part.get("content-disposition", ""), part.get("content-type", ""))
    return any(_FILENAME_PARAM.search(str(value)) for value in headers)


def _add_notice(part: Message, notice: _NoticeTexts) -> None:
    html = part.get_content_subtype() == "html"
    original, codec = _decode(part.get_payload(decode=True) or b"", _charset_of(part))
    text = _insert_html(original, notice.html) if html else notice.text + "\n" + original
    data = _encode_kept(text, codec)
    if data is None:
        if html:
            text = _META_TAG.sub(lambda m: _META_CHARSET.sub(r"\g<1>utf-8", m.group(0)), text)
        data = text.encode("utf-8")
        _set_utf8_charset(part)
    _set_body(part, data, _transfer_encoding(part, data))


def _insert_html(html: str, block: str) -> str:
    start = _BODY_TAG_START.search(html)
    end = html.find(">", start.end()) if start else -1
    if end < 0:
        return block + html
    return html[: end + 1] + "\n" + block + html[end + 1 :]


def _charset_of(part: Message) -> str | None:
    if len(str(part.get("content-type", ""))) > _MAX_PARAM_HEADER_CHARS:
        return None
    return part.get_content_charset() or "us-ascii"


def _decode(data: bytes, charset: str | None) -> tuple[str, str | None]:
    """The text, and the codec that read it when that codec can also write the part back."""
    chain = _decode_chain(charset)
    for name in chain:
        try:
            return _lf(data.decode(name)), name
        except UnicodeDecodeError:
            continue
    try:
        return _lf(data.decode("utf-8")), None
    except UnicodeDecodeError:
        return _lf(data.decode(chain[0] if chain else "utf-8", "replace")), None


def _decode_chain(charset: str | None) -> tuple[str, ...]:
    if not charset:
        return ()
    label = _CHARSET_ALIASES.get(charset.lower(), charset)
    try:
        info = codecs.lookup(label)
    except LookupError:
        return ()
    if not getattr(info, "_is_text_encoding", True) or not _ascii_compatible(info.name):
        return ()  # base64_codec, utf-16 and such cannot label a mail body we write back
    return _DECODE_CHAINS.get(info.name, (info.name,))


def _ascii_compatible(codec: str) -> bool:
    sample = "From: <a@b.c>\r\n=?;\t"
    try:
        return sample.encode(codec) == sample.encode("ascii")
    except UnicodeError:
        return False


def _encode_kept(text: str, codec: str | None) -> bytes | None:
    if codec is None:
        return None
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        return None


def _set_utf8_charset(part: Message) -> None:
    content_type = str(part.get("content-type", ""))
    # Edited on a scratch message: set_param would move the header to the end of the part's.
    scratch = Message()
    if len(content_type) > _MAX_PARAM_HEADER_CHARS or not content_type:
        scratch["Content-Type"] = f'{part.get_content_type()}; charset="utf-8"'
    else:
        scratch["Content-Type"] = content_type
        if "charset*" in content_type.lower():
            scratch.del_param("charset*")
        scratch.set_param("charset", "utf-8")
    if "content-type" in part:
        part.replace_header("Content-Type", scratch["Content-Type"])
    else:
        part["Content-Type"] = scratch["Content-Type"]


def _transfer_encoding(part: Message, data: bytes) -> str:
    """The part's own encoding when it can carry data; else base64."""
    current = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    if current in ("base64", "quoted-printable"):
        return current
    long_lines = any(len(line) > MAX_LINE_OCTETS for line in data.split(b"\n"))
    if current in ("8bit", "binary") and not long_lines:
        return "8bit"
    if current == "7bit" and data.isascii() and not long_lines:
        return "7bit"
    return "base64"


def _set_body(part: Message, data: bytes, transfer_encoding: str) -> None:
    if transfer_encoding == "base64":
        payload = _base64_lines(data.replace(b"\n", b"\r\n"))
    elif transfer_encoding == "quoted-printable":
        payload = quopri.encodestring(data).decode("ascii")
    else:
        payload = data.decode("ascii", "surrogateescape")  # written back as the raw bytes
    part.set_payload(payload)
    if "content-transfer-encoding" in part:
        part.replace_header("Content-Transfer-Encoding", transfer_encoding)
    else:
        part["Content-Transfer-Encoding"] = transfer_encoding


def _become_notice(message: Message, notice: _NoticeTexts) -> None:
    """Keep the message's own headers, drop its content, say where the file went."""
    for name in {key.lower() for key in message.keys() if key.lower().startswith("content-")}:
        del message[name]
    if "mime-version" not in message:
        message["MIME-Version"] = "1.0"
    message["Content-Type"] = 'text/plain; charset="utf-8"'
    message["Content-Transfer-Encoding"] = "base64"
    message.set_payload(_base64_lines(_crlf_utf8(notice.text)))
    message.preamble = message.epilogue = None


def _wrap_in_mixed(root: Message, notice: _NoticeTexts) -> None:
    """A top level with no body at all: its content moves into a part after the notice."""
    content = Message()
    for name, value in [(k, v) for k, v in root.items() if k.lower().startswith("content-")]:
        content[name] = value
    content.set_payload(root.get_payload())
    for name in {key.lower() for key in content.keys()}:
        del root[name]
    if "mime-version" not in root:
        root["MIME-Version"] = "1.0"
    root["Content-Type"] = f'multipart/mixed; boundary="{notice.boundary()}"'
    root.set_payload([_notice_part(notice), content])


def _notice_part(notice: _NoticeTexts) -> Message:
    text = _utf8_part("plain", notice.text)
    if not notice.html.strip():
        return text
    document = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
        f"{notice.html}</body></html>\n"
    )
    alternative = Message()
    alternative["Content-Type"] = f'multipart/alternative; boundary="{notice.boundary()}"'
    alternative.set_payload([text, _utf8_part("html", document)])
    return alternative


def _utf8_part(subtype: str, text: str) -> Message:
    part = Message()
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(_base64_lines(_crlf_utf8(text)))
    return part


def _base64_lines(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


def _crlf_utf8(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _CrlfBodyGenerator(BytesGenerator):
    """BytesGenerator that writes a body whose line ends are all CRLF already (the relay made
    the message CRLF before parsing) as it is: the stdlib splits every body into a list of
    lines to join them again with CRLF, several times a large kept attachment's size, once
    per copy. The bytes written are the same either way."""

    def _write_lines(self, lines: str) -> None:
        crlf = lines.count("\r\n")
        if self._NL == "\r\n" and lines.count("\r") == crlf == lines.count("\n"):
            self.write(lines)
        else:
            super()._write_lines(lines)

    def _handle_text(self, msg: Message) -> None:
        """A body kept as a span of the received bytes (gateway.mime_spans) is written from
        them: what the generator would write for it, without making it a string first."""
        span = body_span(msg)
        if span is not None and self._NL == "\r\n" and crlf_only(*span):
            raw, start, end = span
            self._fp.write(memoryview(raw)[start:end])
        else:
            super()._handle_text(msg)

    _writeBody = _handle_text  # the generator's fallback for types without their own handler


def _serialise(root: Message) -> bytes:
    buffer = io.BytesIO()
    _CrlfBodyGenerator(buffer, mangle_from_=False, policy=_OUTPUT_POLICY).flatten(root)
    # Header values keep the line ends they arrived with; SMTP wants CRLF and nothing else.
    return crlf_line_endings(buffer.getvalue())
