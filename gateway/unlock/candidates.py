"""Find the strings in a mail that may be the password of a ZIP sent just before, best first.

Reads the Subject and the body text (text/plain, else text/html without its tags) in whatever
charset the sender's client used. Best are values written after a label (パスワード：…, PW: …,
or the line after "パスワードは以下の通りです。"), then quoted strings (「…」, "…"), then every
other token of 4–64 characters, the signature block's last. Each candidate is offered raw and
NFKC-normalised (full-width ａｂｃ１２３ → abc123). Only reads the message: nothing is tried here.
"""

from __future__ import annotations

import re
import unicodedata
from email.header import Header, decode_header
from email.message import Message
from html.parser import HTMLParser

from gateway.filenames import decode_bytes, decode_encoded_words, has_filename_parameter
from gateway.mime import walk_with_paths

MAX_CANDIDATE_CHARS = 64
_MIN_TOKEN_CHARS = 4
_MAX_TEXT_CHARS = 64 * 1024  # of all text read; password mails are short
_MAX_HTML_CHARS = 256 * 1024
_LINES_AFTER_LABEL = 3  # how far below a label line without a value its value may sit
_WHITESPACE = " \t\u3000"


def _fullwidth_insensitive(word: str) -> str:
    """A regex matching word in any case, half- or full-width (ＰＷ, Ｐａｓｓｗｏｒｄ)."""
    return "".join(
        f"[{c.lower()}{c.upper()}{chr(ord(c.lower()) + 0xFEE0)}{chr(ord(c.upper()) + 0xFEE0)}]"
        for c in word
    )


_LATIN_LABELS = ("password", "passwd", "passcode", "pass", "pwd", "pw")
_JAPANESE_LABELS = ("解凍パスワード", "パスワード", "ﾊﾟｽﾜｰﾄﾞ", "暗証番号", "パス")
_LATIN = "A-Za-zＡ-Ｚａ-ｚ"
_KATAKANA = "ァ-ヺーｦ-ﾟ"
# Latin labels stand as words; Japanese ones must not run on into more katakana (パスポート)
_LABEL = re.compile(
    "|".join(
        [rf"(?<![{_LATIN}]){_fullwidth_insensitive(w)}(?![{_LATIN}])" for w in _LATIN_LABELS]
        + [rf"{re.escape(w)}(?![{_KATAKANA}])" for w in _JAPANESE_LABELS]
    )
)
_WS = f"[{_WHITESPACE}]"
# between label and value: an optional note in parentheses ("（半角英数字）"), then a separator
_LABEL_TAIL = re.compile(
    rf"{_WS}*(?:[（(][^）)\n]{{0,30}}[）)])?{_WS}*"
    rf"(?:(?:[:：=＝】\]＞>]|は|(?i:is)(?![A-Za-z])[{_WHITESPACE}:：]*){_WS}*|{_WS}+)"
)
_QUOTES = {"「": "」", "『": "』", '"': '"', "'": "'", "“": "”", "‘": "’", "＂": "＂"}
_QUOTED = re.compile(
    "|".join(
        rf"{re.escape(o)}([^{re.escape(c)}\n]{{1,64}}){re.escape(c)}" for o, c in _QUOTES.items()
    )
)
# where an unquoted value ends: Japanese punctuation and brackets (ASCII ones may be in passwords)
_VALUE_END = re.compile(r"[\s。、，．「」『』（）【】〈〉《》〔〕]")
_EDGE_PUNCTUATION = "「」『』（）【】〈〉《》〔〕[]()<>\"'“”‘’＂。、，．・:：,;"
_TRAILING_SENTENCE_PUNCTUATION = ".,;:!?"
_PROSE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]")  # kana, kanji
_NOT_VALUES = frozenset(
    {"is", "for", "of", "the", "to", "and", "will", "below", "follows", "as", "here", "protected"}
)
_SIGNATURE_RULE = re.compile(r"^\s*(?:--\s*|[-=＝_＿─━~〜*＊#]{8,}.*)$")
_CONTACT_DETAILS = re.compile(r"TEL|FAX|E-?mail|〒|@|電話|内線", re.IGNORECASE)
_PHONE_OR_ADDRESS = re.compile(r"^(?:\+?[\d(][\d()\-‐－]{5,}|\S+@\S+|https?://\S+|〒.*)$")


def password_candidates(root: Message, *, limit: int = 64) -> list[str]:
    """Candidate passwords from the Subject and body text, best first, at most limit of them."""
    texts = _texts(root)
    labelled = [value for text in texts for value in _label_values(text)]
    quoted = [m.group(m.lastindex or 0) for text in texts for m in _QUOTED.finditer(text)]
    tokens = [token for text in texts for token in _ranked_tokens(text)]
    ranked = labelled + quoted + tokens
    # kana or kanji are all but impossible in a ZIP password: such strings go last
    ordered = [c for c in ranked if not _PROSE.search(c)] + [c for c in ranked if _PROSE.search(c)]
    candidates: list[str] = []
    seen: set[str] = set()
    for candidate in ordered:
        for form in (candidate, unicodedata.normalize("NFKC", candidate)):
            if 1 <= len(form) <= MAX_CANDIDATE_CHARS and form not in seen:
                seen.add(form)
                candidates.append(form)
                if len(candidates) >= limit:
                    return candidates
    return candidates


def looks_like_password_mail(root: Message, *, max_text_chars: int = 8192) -> bool:
    """Cheap test: no attachment, short text, and a labelled or quoted candidate."""
    if _has_attachment(root):
        return False
    texts = _texts(root)
    if sum(len(text) for text in texts) >= max_text_chars:
        return False
    return any(_label_values(text) or _QUOTED.search(text) for text in texts)


# --- reading the text --------------------------------------------------------------------------


def _texts(root: Message) -> list[str]:
    """Subject, then each body text; bounded in total."""
    texts = [_subject(root)]
    plain: list[str] = []
    html: list[str] = []
    for _, part in walk_with_paths(root):
        if part.is_multipart() or _is_attachment(part):
            continue
        if part.get_content_type() == "text/plain":
            plain.append(_part_text(part))
        elif part.get_content_type() == "text/html" and not plain:
            html.append(_html_text(_part_text(part)[:_MAX_HTML_CHARS]))
    texts.extend(plain or html)
    bounded: list[str] = []
    room = _MAX_TEXT_CHARS
    for text in texts:
        bounded.append(text[:room])
        room -= len(bounded[-1])
    return [text for text in bounded if text]


def _subject(root: Message) -> str:
    value = root.get("subject")
    if value is None:
        return ""
    if isinstance(value, Header):  # compat32 hands raw 8-bit headers over as Header objects
        return "".join(
            decode_bytes(
                chunk if isinstance(chunk, bytes) else chunk.encode("utf-8", "surrogateescape"),
                None if charset in (None, "unknown-8bit") else charset,
            )
            for chunk, charset in decode_header(value)
        )
    text = str(value)
    if "\x1b" in text:  # raw ISO-2022-JP straight in the header (old Japanese mailers)
        return decode_bytes(text.encode("ascii", "replace"), "iso-2022-jp")
    return decode_encoded_words(text)


def _part_text(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    return decode_bytes(raw, part.get_content_charset())


def _is_attachment(part: Message) -> bool:
    """As classify sees it: a leaf that is not unnamed body text."""
    if part.get_content_maintype() in ("multipart", "message"):
        return False
    if part.get_content_disposition() == "attachment" or has_filename_parameter(part):
        return True
    return part.get_content_type() not in ("text/plain", "text/html")


def _has_attachment(root: Message) -> bool:
    return any(
        not part.is_multipart() and _is_attachment(part) for _, part in walk_with_paths(root)
    )


class _HtmlText(HTMLParser):
    """The text a reader sees: no style or script, a line break per block element."""

    _BLOCKS = frozenset({"br", "p", "div", "tr", "li", "td", "h1", "h2", "h3", "table", "pre"})
    _HIDDEN = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data)


def _html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "".join(parser.pieces).replace("\xa0", " ")


# --- (a) values after labels -------------------------------------------------------------------


def _label_values(text: str) -> list[str]:
    """Values written after a label on its line, or, when the line has none, on a line below."""
    values: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        found = list(_LABEL.finditer(line))
        if not found:
            continue
        on_line = [value for match in found for value in _values_after(line[match.end() :])]
        after_colon = line[found[0].end() :].rpartition("：" if "：" in line else ":")
        if not on_line and after_colon[1]:  # "Password for the ZIP file: Xy7kq2Pz"
            on_line = _values_after(" " + after_colon[2])
        values.extend(on_line)
        if not on_line:
            values.extend(_value_below(lines[number + 1 : number + 1 + _LINES_AFTER_LABEL]))
    return values


def _values_after(rest: str) -> list[str]:
    """The value after a label: quoted, else up to whitespace or Japanese punctuation; then the
    whole rest of the line when it holds spaces ("Password = p@ss w0rd" → "p@ss", "p@ss w0rd")."""
    tail = _LABEL_TAIL.match(rest)
    if tail is None:
        return []
    rest = rest[tail.end() :]
    quoted = _QUOTED.match(rest)
    if quoted:
        return [quoted.group(quoted.lastindex or 0)]
    value = _VALUE_END.split(rest, maxsplit=1)[0]
    if not _is_value(value):
        return []
    values = [value.rstrip(_TRAILING_SENTENCE_PUNCTUATION) or value, value]
    whole = re.split(r"[。「」『』（）【】]", rest, maxsplit=1)[0].strip(_WHITESPACE)
    if whole != value and _is_value(whole):
        values.append(whole)
    return values


def _value_below(lines: list[str]) -> list[str]:
    """The first token of the first non-empty line, unless that line is a label line itself."""
    for line in lines:
        if not line.strip(_WHITESPACE):
            continue
        if _LABEL.search(line):
            return []
        quoted = _QUOTED.match(line.strip(_WHITESPACE))
        token = quoted.group(quoted.lastindex or 0) if quoted else _strip_edges(line.split()[0])
        return [token] if _is_value(token) else []
    return []


def _is_value(value: str) -> bool:
    return bool(value) and not _PROSE.search(value) and value.lower() not in _NOT_VALUES


# --- (c) remaining tokens ----------------------------------------------------------------------


def _ranked_tokens(text: str) -> list[str]:
    """Tokens of 4–64 characters: alone on a line first, then others, then those that look like
    phone numbers, addresses or sit in the signature block (which must not crowd out the rest)."""
    tiers: tuple[list[str], list[str], list[str]] = ([], [], [])
    lines = text.splitlines()
    signature_start = _signature_start(lines)
    for number, line in enumerate(lines):
        in_signature = number >= signature_start
        words = [_strip_edges(word) for word in line.split()]
        words = [w for w in words if _MIN_TOKEN_CHARS <= len(w) <= MAX_CANDIDATE_CHARS]
        # rules (-----) and the labels themselves are no passwords
        words = [w for w in words if any(c.isalnum() for c in w) and not _LABEL.fullmatch(w)]
        for word in words:
            if in_signature or _PHONE_OR_ADDRESS.match(word):
                tiers[2].append(word)
            else:
                tiers[0 if len(words) == 1 and len(line.split()) == 1 else 1].append(word)
    return tiers[0] + tiers[1] + tiers[2]


def _signature_start(lines: list[str]) -> int:
    """The "-- " line, or the first rule line whose block (up to the next rule) holds contact
    details; else past the end. Rules alone do not start it: passwords are often framed by them."""
    rules = [number for number, line in enumerate(lines) if _SIGNATURE_RULE.match(line)]
    for rule, next_rule in zip(rules, [*rules[1:], len(lines)]):
        block = lines[rule:next_rule]
        if lines[rule].strip() == "--" or any(_CONTACT_DETAILS.search(line) for line in block):
            return rule
    return len(lines)


def _strip_edges(word: str) -> str:
    """Without surrounding brackets, quotes and Japanese punctuation, nor a final . , ; : ! ?"""
    word = word.strip(_EDGE_PUNCTUATION)
    return word.rstrip(_TRAILING_SENTENCE_PUNCTUATION) or word
