"""Structure-aware, composable mutations of a PPAP mail and its envelope.

Each mutator is a small named function `(data, envelope, rng) -> (data, envelope)`; one that does
not apply returns its input unchanged. `mutate` applies 1–3 of them in stage order (envelope, ZIP
records, containers, MIME structure, shells, encodings, raw bytes, boundaries, line endings), so
that a later re-serialisation of the MIME tree cannot undo an earlier byte-level change. Raw bytes
that the generator would rewrite (binary bodies, 8-bit noise) go in through placeholder slots.
"""

from __future__ import annotations

import base64
import gzip
import io
import quopri
import re
import struct
import tarfile
import zipfile
from email.message import Message

from tests.fuzz.addresses import INTERNAL_DOMAIN, is_internal
from tests.fuzz.seeds import (Slots, attachment, b64, content_entity, dump, load, outer, raw_part,
                              set_body, set_header, split_message, tnef, uuencode, zip_of)

MUTATORS: dict[str, tuple[int, object]] = {}
SIGNATURES = (b"PK\x03\x04", b"7z\xbc\xaf\x27\x1c")


def mutator(stage: int):
    def register(function):
        MUTATORS[function.__name__] = (stage, function)
        return function
    return register


def mutate(data: bytes, envelope: dict, rng, count: int | None = None) -> tuple[bytes, dict, list[str], list[str]]:
    """Apply `count` (default 1–3) distinct mutators in stage order: (data, envelope, applied, skipped)."""
    wanted = count or rng.choice((1, 1, 2, 2, 3))
    applied: list[str] = []
    skipped: list[str] = []
    names = sorted(MUTATORS)
    for _ in range(4):  # redraw when none of the chosen ones applied
        chain = sorted(rng.sample(names, wanted), key=lambda name: MUTATORS[name][0])
        for name in chain:
            try:
                new_data, new_envelope = MUTATORS[name][1](data, dict(envelope), rng)
            except Exception as error:  # noqa: BLE001 - a mutator that breaks is a no-op
                skipped.append(f"{name}: {type(error).__name__}")
                continue
            if (new_data, new_envelope) == (data, envelope):
                skipped.append(name)
            else:
                data, envelope = new_data, new_envelope
                applied.append(name)
        if applied:
            break
    return data, envelope, applied, skipped


# -- finding what to mutate (the building blocks are in seeds.py) --------------------------------

def leaves(message: Message, parent: Message | None = None, index: int = 0):
    payload = message.get_payload()
    if isinstance(payload, list):
        for number, sub in enumerate(payload):
            if isinstance(sub, Message):
                yield from leaves(sub, message, number)
    else:
        yield parent, index, message


def decoded(part: Message) -> bytes:
    try:
        return part.get_payload(decode=True) or b""
    except Exception:  # noqa: BLE001
        return b""


def pick_archive(data: bytes, rng):
    """(tree, parent, index, part, archive bytes) for a random leaf holding an archive, or None."""
    tree = load(data)
    found = [(p, i, part) for p, i, part in leaves(tree)
             if any(signature in decoded(part) for signature in SIGNATURES)]
    if not found:
        return None
    parent, index, part = rng.choice(found)
    return tree, parent, index, part, decoded(part)


def replace_in(parent: Message | None, index: int, new: Message) -> bool:
    if parent is None:
        return False
    parent.get_payload()[index] = new
    return True


def on_part(data: bytes, rng, edit) -> bytes:
    """`edit(part, archive, slots)` the archive's part in place and flatten; False: leave it be."""
    found = pick_archive(data, rng)
    if not found:
        return data
    slots = Slots()
    return data if edit(found[3], found[4], slots) is False else dump(found[0], slots)


def on_archive(data: bytes, rng, change) -> bytes:
    """Re-encode the archive part's payload as base64 after `change(archive bytes, rng)`."""
    def edit(part, archive, slots):
        new = change(archive, rng)
        if new is None or new == archive:
            return False
        set_body(part, b64(new), "base64")
    return on_part(data, rng, edit)


def root_boundary(data: bytes) -> bytes | None:
    boundary = load(data).get_boundary()
    return boundary.encode("utf-8", "surrogateescape") if boundary else None


# -- envelopes (stage 0) ---------------------------------------------------------------------------

# An external recipient spelled so that it might pass for an internal one.
DISGUISES = {
    "env_percent_hack": ("{l}%{d}@{i}",),
    "env_bang_path": ("{d}!{l}@{i}",),
    "env_quoted_local": ('"{l}@{d}"@{i}',),
    "env_source_route": ("@{i}:{l}@{d}",),
    "env_lookalike_domain": ("{l}@sub.{i}", "{l}@{i}.", "{l}@{i}.{d}", "{l}@x{i}", "{l}@{I}", "{l}@[127.0.0.1]"),
    "env_tab": ("{l}\t@{d}", "{l}@{d}\t", "\t{l}@{d}", "{l}@\t{i}", "{l}\t@{i}"),
}


def _disguiser(name: str, forms: tuple[str, ...]):
    def disguise(data, envelope, rng):
        rcpts = list(envelope["rcpt_to"]) or ["tanaka@partner.example.com"]
        index = rng.choice([i for i, r in enumerate(rcpts) if not is_internal(r)] or [0])
        local, _, domain = rcpts[index].rpartition("@")
        form = rng.choice(forms) if len(forms) > 1 else forms[0]
        rcpts[index] = form.format(l=local or "tanaka", d=domain or "partner.example.com",
                                   i=INTERNAL_DOMAIN, I=INTERNAL_DOMAIN.upper())
        return data, {**envelope, "rcpt_to": rcpts}
    disguise.__name__ = disguise.__qualname__ = name
    return disguise


for _name, _forms in DISGUISES.items():
    mutator(0)(_disguiser(_name, _forms))


@mutator(0)
def env_null_sender(data, envelope, rng):
    return data, {**envelope, "mail_from": ""}


@mutator(0)
def env_mixed(data, envelope, rng):
    extra = [f"staff{n}@{INTERNAL_DOMAIN}" for n in range(rng.randint(1, 3))] + ["kato@example.co.jp"]
    rcpts = list(dict.fromkeys(list(envelope["rcpt_to"]) + extra))
    rng.shuffle(rcpts)
    return data, {**envelope, "rcpt_to": rcpts}


@mutator(0)
def env_many(data, envelope, rng):
    count = rng.randint(20, max(20, 99 - len(envelope["rcpt_to"])))
    extra = [f"user{n}@{INTERNAL_DOMAIN}" if rng.random() < 0.5 else f"user{n}@partner{n % 7}.example.com"
             for n in range(count)]
    return data, {**envelope, "rcpt_to": list(dict.fromkeys(list(envelope["rcpt_to"]) + extra))}


# -- ZIP records (stage 1) -------------------------------------------------------------------------

def _offsets(blob: bytes, signature: bytes) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(signature), blob)][:2000]


def _patch(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    if offset + size > len(blob):
        return blob
    return blob[:offset] + struct.pack(fmt, value & (256 ** size - 1)) + blob[offset + size:]


@mutator(1)
def zip_junk_wrap(data, envelope, rng):
    def change(blob, rng):
        stub = b"MZ\x90\x00" + rng.randbytes(rng.randint(0, 4096))
        before, after = rng.choice(((stub, b""), (b"", rng.randbytes(rng.randint(1, 2048))), (stub, stub)))
        return before + blob + after
    return on_archive(data, rng, change), envelope


@mutator(1)
def zip_flip_flag(data, envelope, rng):
    def change(blob, rng):
        local, central = (b"PK\x03\x04", 6), (b"PK\x01\x02", 8)
        for signature, field in rng.choice(([local], [central], [local, central])):
            for offset in _offsets(blob, signature):
                if offset + field + 2 <= len(blob):
                    flags = struct.unpack_from("<H", blob, offset + field)[0]
                    blob = _patch(blob, offset + field, "<H", flags ^ 1)
        return blob
    return on_archive(data, rng, change), envelope


@mutator(1)
def zip_corrupt_end_record(data, envelope, rng):
    def change(blob, rng):
        end = blob.rfind(b"PK\x05\x06")
        if end < 0:
            return None
        return rng.choice((
            lambda: _patch(blob, end + 16, "<I", 0), lambda: _patch(blob, end + 10, "<H", 0xFFFF),
            lambda: _patch(blob, end + 8, "<H", 0), lambda: _patch(blob, end + 12, "<I", 7),
            lambda: blob[:end], lambda: _patch(blob, end + 20, "<H", 0xFFFF),
            lambda: blob[:end] + b"PK\x05\x07" + blob[end + 4:]))()
    return on_archive(data, rng, change), envelope


@mutator(1)
def zip_shift_offsets(data, envelope, rng):
    def change(blob, rng):
        delta = rng.choice((-1, 1, -30, 46, 4096, -(2 ** 31)))
        end = blob.rfind(b"PK\x05\x06")
        if rng.random() < 0.5 and end >= 0:
            return _patch(blob, end + 16, "<I", struct.unpack_from("<I", blob, end + 16)[0] + delta)
        for offset in _offsets(blob, b"PK\x01\x02"):
            if offset + 46 <= len(blob):
                blob = _patch(blob, offset + 42, "<I", struct.unpack_from("<I", blob, offset + 42)[0] + delta)
        return blob
    return on_archive(data, rng, change), envelope


@mutator(1)
def zip_change_method(data, envelope, rng):
    def change(blob, rng):
        method = rng.choice((0, 8, 12, 14, 93, 95, 98, 99, 0xFFFF))
        for signature, field in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            for offset in _offsets(blob, signature):
                blob = _patch(blob, offset + field, "<H", method)
        return blob
    return on_archive(data, rng, change), envelope


@mutator(1)
def zip_truncate(data, envelope, rng):
    return on_archive(data, rng, lambda blob, r: blob[: r.randint(min(30, len(blob) - 1), len(blob) - 1)]), envelope


# -- containers (stage 2) --------------------------------------------------------------------------

def _swap_archive(data, rng, build) -> bytes:
    found = pick_archive(data, rng)
    if not found:
        return data
    tree, parent, index, _, archive = found
    return dump(tree) if replace_in(parent, index, build(archive, rng)) else data


@mutator(2)
def in_plain_zip(data, envelope, rng):
    def build(archive, rng):
        members = [("readme.txt", b"see inner archive\r\n")] * rng.randint(0, 1) + [("inner.zip", archive)]
        return attachment(zip_of(members, rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))),
                          "application/zip", "outer.zip")
    return _swap_archive(data, rng, build), envelope


@mutator(2)
def in_tar_gz(data, envelope, rng):
    def build(archive, rng):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo("files/quote.zip")
            info.size, info.mtime = len(archive), 1795000000
            tar.addfile(info, io.BytesIO(archive))
        if rng.random() < 0.5:
            return attachment(out.getvalue(), "application/x-tar", "files.tar")
        return attachment(gzip.compress(out.getvalue(), mtime=0), "application/gzip", "files.tar.gz")
    return _swap_archive(data, rng, build), envelope


@mutator(2)
def in_tnef(data, envelope, rng):
    return _swap_archive(data, rng, lambda archive, r: attachment(
        tnef(b"quote.zip", archive), "application/ms-tnef", "winmail.dat")), envelope


def _into_body(data, rng, render) -> bytes:
    """Drop the archive part and carry it as text: in a plain 7/8-bit text part, or a new one."""
    found = pick_archive(data, rng)
    if not found or found[1] is None:
        return data
    tree, parent, index, _, archive = found
    text = render(archive, rng)
    body = next((p for _, _, p in leaves(tree) if p.get_content_type() == "text/plain" and str(
        p.get("content-transfer-encoding", "7bit")).strip().lower() in ("7bit", "8bit")), None)
    if body is not None and text.startswith("\r\n") and isinstance(body._payload, str):
        del parent.get_payload()[index]
        body.set_payload(body._payload + text)  # the raw text: 8-bit bytes stay surrogates
    else:
        ctype = "text/html; charset=us-ascii" if text.lstrip().startswith("<") else "text/plain; charset=us-ascii"
        parent.get_payload()[index] = raw_part([("Content-Type", ctype)], text)
    return dump(tree)


@mutator(2)
def body_base64_text(data, envelope, rng):
    def render(archive, rng):
        quote = rng.choice(("", "> ", ">> ", ">"))
        lines = b64(archive, rng.choice((60, 76))).splitlines()
        return "\r\nThe file as text:\r\n\r\n" + "".join(f"{quote}{line}\r\n" for line in lines)
    return _into_body(data, rng, render), envelope


@mutator(2)
def body_uuencode(data, envelope, rng):
    def render(archive, rng):
        return "\r\n\r\n" + uuencode(archive, "quote.zip")
    return _into_body(data, rng, render), envelope


@mutator(2)
def html_data_uri(data, envelope, rng):
    def render(archive, rng):
        encoded = base64.b64encode(archive).decode()
        return (f'<html><body><p>Download: <a href="data:application/zip;base64,{encoded}" '
                f'download="quote.zip">quote.zip</a></p></body></html>\r\n')
    return _into_body(data, rng, render), envelope


# -- MIME structure (stage 3) ----------------------------------------------------------------------

CONTENT_TYPES = ("text/plain", "text/html", "message/delivery-status", "message/partial; id=x; number=1",
                 "message/rfc822", "message/global", "multipart/mixed", "application/octet-stream",
                 "image/png", "application/pkcs7-signature")


@mutator(3)
def ctype_swap(data, envelope, rng):
    def edit(part, archive, slots):
        name = part.get_param("name")
        suffix = f'; name="{name}"' if isinstance(name, str) and rng.random() < 0.5 else ""
        set_header(part, "Content-Type", slots((rng.choice(CONTENT_TYPES) + suffix).encode()))
    return on_part(data, rng, edit), envelope


@mutator(3)
def drop_names(data, envelope, rng):
    def edit(part, archive, slots):
        for header, param in (("Content-Type", "name"), ("Content-Disposition", "filename")):
            if part.get(header):
                part.del_param(param, header=header)
                part.del_param(param + "*", header=header)
    return on_part(data, rng, edit), envelope


@mutator(3)
def disposition_change(data, envelope, rng):
    return on_part(data, rng, lambda part, archive, slots: set_header(part, "Content-Disposition", rng.choice(
        (None, "inline", 'attachment; filename="readme.txt"', "attachment;;; filename=", "x-garbage",
         'inline; filename="quote.zip"', 'attachment; filename="quote.zip"; filename="b.txt"')))), envelope


def _wrap_message(message: bytes, rng, slots: Slots) -> Message:
    """A message/rfc822 part; type and body go in as slots so that the generator leaves them be."""
    cte = rng.choice(("7bit", "base64", "quoted-printable"))
    body = {"7bit": message, "base64": b64(message).encode(),
            "quoted-printable": quopri.encodestring(message).replace(b"\n", b"\r\n")}[cte]
    ctype = rng.choice(("message/rfc822", "message/rfc822", "message/global"))
    return raw_part([("Content-Type", slots(ctype.encode())), ("Content-Transfer-Encoding", cte)], slots(body))


@mutator(3)
def wrap_attachment_rfc822(data, envelope, rng):
    slots = Slots()

    def build(archive, rng):
        inner = (b"From: <somu@city.example.lg.jp>\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
                 + dump(attachment(archive, "application/zip", "quote.zip")))
        return _wrap_message(inner, rng, slots)
    found = pick_archive(data, rng)
    if not found or not replace_in(found[1], found[2], build(found[4], rng)):
        return data, envelope
    return dump(found[0], slots), envelope


@mutator(3)
def wrap_whole_rfc822(data, envelope, rng):
    head, _ = split_message(data)
    slots = Slots()
    inner = dump(_wrap_message(data, rng, slots), slots)
    text = b"Content-Type: text/plain\r\n\r\nForwarded message attached.\r\n"
    return outer(head, "multipart/mixed", [text, inner], "=_fuzz_fwd"), envelope


@mutator(3)
def attach_whole_eml(data, envelope, rng):
    head, _ = split_message(data)
    eml = dump(attachment(data, rng.choice(("application/octet-stream", "application/x-eml")), "forward.eml"))
    return outer(head, "multipart/mixed", [b"Content-Type: text/plain\r\n\r\nSee attached.\r\n", eml],
                 "=_fuzz_eml"), envelope


@mutator(3)
def nest_deep(data, envelope, rng):
    def build(archive, rng):
        entity = dump(attachment(archive, "application/zip", "quote.zip"))
        for level in range(rng.randint(1, 80)):
            entity = (f'Content-Type: multipart/mixed; boundary="=_n{level}"\r\n\r\n--=_n{level}\r\n'.encode()
                      + entity + f"\r\n--=_n{level}--\r\n".encode())
        return load(entity)
    return _swap_archive(data, rng, build), envelope


@mutator(3)
def many_empty_parts(data, envelope, rng):
    boundary = root_boundary(data)
    if not boundary:
        return data, envelope
    delimiter = b"--" + boundary + b"\r\n"
    at = data.find(delimiter)
    if at < 0:
        return data, envelope
    empties = rng.choice((delimiter + b"\r\n", delimiter + b"Content-Type: text/plain\r\n\r\n"))
    return data[:at] + empties * rng.randint(1000, 5000) + data[at:], envelope


@mutator(3)
def pad_part_header(data, envelope, rng):
    def edit(part, archive, slots):
        size = rng.choice((2048, 8192, 30 * 1024, 70 * 1024))
        if rng.random() < 0.5:  # one long header, folded
            words = [f"pad{n:05d}" for n in range(size // 9)]
            padding = "\r\n ".join(" ".join(words[i:i + 8]) for i in range(0, len(words), 8)).encode()
        else:  # many header lines
            padding = b"x\r\n".join(b"X-Pad-%d: " % n + b"x" * 30 for n in range(size // 40))
        part._headers[0:0] = [("X-Padding", slots(padding))]  # before its Content-Type
    return on_part(data, rng, edit), envelope


# -- shells (stage 4) ------------------------------------------------------------------------------

@mutator(4)
def shell_signed(data, envelope, rng):
    head, _ = split_message(data)
    garbage = b64(rng.randbytes(rng.randint(64, 700))).encode()
    if rng.random() < 0.5:
        sig = b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ctype = 'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256'
    else:
        sig, garbage = b"Content-Type: application/pgp-signature\r\n\r\n", (
            b"-----BEGIN PGP SIGNATURE-----\r\n\r\n" + garbage + b"-----END PGP SIGNATURE-----\r\n")
        ctype = 'multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256'
    return outer(head, ctype, [content_entity(data), sig + garbage], "=_fuzz_signed"), envelope


@mutator(4)
def shell_pkcs7_part(data, envelope, rng):
    head, _ = split_message(data)
    p7m = (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(rng.randbytes(300)).encode())
    return outer(head, "multipart/mixed", [content_entity(data), p7m], "=_fuzz_p7m"), envelope


@mutator(4)
def shell_pgp_encrypted(data, envelope, rng):
    found = pick_archive(data, rng)
    head, _ = split_message(data)
    payload = found[4] if found else content_entity(data)
    control = b"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
    body = (b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(payload).encode())
    return outer(head, 'multipart/encrypted; protocol="application/pgp-encrypted"', [control, body],
                 "=_fuzz_pgp"), envelope


# -- encodings (stage 5) and raw bytes (stage 6) ---------------------------------------------------

@mutator(5)
def cte_spelling(data, envelope, rng):
    def edit(part, archive, slots):
        spelling = rng.choice(("BASE64", " base64 ", "base64; x", "Base64\t", "base64 (yes)", None,
                               "quoted-printable", "7bit", "x-uuencode", "uuencode", "8bit", "binary"))
        if spelling in ("x-uuencode", "uuencode"):
            set_body(part, uuencode(archive, "quote.zip"), spelling)
        elif spelling in ("8bit", "binary"):
            set_body(part, slots(archive), spelling)
        else:
            set_header(part, "Content-Transfer-Encoding", spelling)
    return on_part(data, rng, edit), envelope


@mutator(5)
def b64_rewrap(data, envelope, rng):
    def edit(part, archive, slots):
        text = b64(archive, rng.choice((1, 3, 4, 5, 17, 63, 77, 200, 998, 5000)))
        indent = rng.choice(("", " ", "\t", "\r\n"))
        set_body(part, "".join(indent + line + "\r\n" for line in text.splitlines()), "base64")
    return on_part(data, rng, edit), envelope


@mutator(5)
def encoded_words(data, envelope, rng):
    tree = load(data)
    found = pick_archive(data, rng)
    name = base64.b64encode("見積書.zip".encode()).decode()
    word = rng.choice((f"=?x-unknown?B?{name}?=", f"=??B?{name}?=", "=?utf-8?Q?bad=ZZ?=", "=?utf-8?B?!!!?=",
                       f"=?iso-2022-jp?B?{name}?=", "=?=?utf-8?B?eA==?=?="))
    if found and rng.random() < 0.6:
        tree, _, _, part, _ = found
        for header, param in (("Content-Type", "name"), ("Content-Disposition", "filename")):
            if part.get(header):
                part.set_param(param, word, header=header)
    else:
        set_header(tree, "Subject", word)
    return dump(tree), envelope


@mutator(6)
def raw_8bit_headers(data, envelope, rng):
    found = pick_archive(data, rng)
    tree = found[0] if found else load(data)
    slots = Slots()
    raw = rng.choice(("見積書_2026年11月.zip".encode("utf-8"), "見積書_2026年11月.zip".encode("cp932")))
    if found and rng.random() < 0.6:
        part = found[3]
        set_header(part, "Content-Disposition", f'attachment; filename="{slots(raw)}"')
        part.set_param("name", slots(raw))
    else:
        set_header(tree, "Subject", slots(b"\xe3\x80\x90 " + raw))
    return dump(tree, slots), envelope


@mutator(6)
def b64_8bit_noise(data, envelope, rng):
    def edit(part, archive, slots):
        lines = b64(archive).encode().splitlines()
        for _ in range(rng.randint(1, 20)):
            index = rng.randrange(len(lines))
            at = rng.randrange(len(lines[index]) + 1)
            noise = rng.choice((b"\xff", b"\x80\x81", b"\xe3\x81\x82", b"*", b"!!", b"\x00"))
            lines[index] = lines[index][:at] + noise + lines[index][at:]
        set_body(part, slots(b"\r\n".join(lines) + b"\r\n"), "base64")
    return on_part(data, rng, edit), envelope


# -- boundaries (stage 8) and line endings (stage 9), on the bytes --------------------------------

@mutator(8)
def boundary_exotic(data, envelope, rng):
    old = root_boundary(data)
    if not old:
        return data, envelope
    new = rng.choice(("境界=_fuzz".encode(), b"=_fuzz \xff\xfe", b"=_fuzz_cont", b"=_fuzz_case"))
    param = rng.choice((b'boundary="%s"' % new, b"boundary*=utf-8''" + re.sub(
        rb"[^A-Za-z0-9_]", lambda m: b"%%%02X" % m.group()[0], new), b'boundary*0="=_fu"; boundary*1="zz_cont"',
        b'BOUNDARY = "%s"' % new, b'boundary="other"; boundary="%s"' % new))
    if b"boundary*0" in param:
        new = b"=_fuzz_cont"
    head, body = split_message(data)
    head = re.sub(rb'boundary\s*=\s*(?:"[^"]*"|[^;\s]+)', lambda m: param, head, count=1, flags=re.I)
    return head + b"\r\n\r\n" + body.replace(b"--" + old, b"--" + new), envelope


@mutator(8)
def boundary_damage(data, envelope, rng):
    old = root_boundary(data)
    if not old:
        return data, envelope
    lines = [m.start() for m in re.finditer(re.escape(b"--" + old), data)]
    if not lines:
        return data, envelope
    at = rng.choice(lines)
    choice = rng.choice(("dup", "truncate", "no_close", "no_first"))
    if choice == "dup":
        return data[:at] + b"--" + old + b"\r\n" + data[at:], envelope
    if choice == "truncate":
        return data[:at] + b"--" + old[:-rng.randint(1, max(1, len(old) - 1))] + data[at + 2 + len(old):], envelope
    if choice == "no_close":
        return data.replace(b"--" + old + b"--", b""), envelope
    return data[:lines[0]] + data[lines[0] + 2 + len(old):], envelope


# CRLF replaced by one of `ends` with a chance of one of `shares` (all, some, a few lines).
LINE_ENDS = {
    "eol_lf": ((b"\n",), (1.0, 0.5, 0.05)),
    "eol_cr": ((b"\r",), (1.0, 0.5)),
    "eol_crcrlf": ((b"\r\r\n",), (1.0, 0.3)),
    "eol_mixed": ((b"\n", b"\r", b"\r\r\n", b"\n\r"), (0.8,)),
}


def _line_ender(name: str, ends: tuple[bytes, ...], shares: tuple[float, ...]):
    def rewrite(data, envelope, rng):
        share = rng.choice(shares)
        pieces = data.split(b"\r\n")
        return pieces[0] + b"".join((rng.choice(ends) if rng.random() < share else b"\r\n") + piece
                                    for piece in pieces[1:]), envelope
    rewrite.__name__ = rewrite.__qualname__ = name
    return rewrite


for _name, (_ends, _shares) in LINE_ENDS.items():
    mutator(9)(_line_ender(_name, _ends, _shares))


@mutator(9)
def nul_bytes(data, envelope, rng):
    for _ in range(rng.randint(1, 12)):
        at = rng.randrange(len(data) + 1)
        data = data[:at] + b"\x00" * rng.randint(1, 3) + data[at:]
    return data, envelope


@mutator(9)
def long_lines(data, envelope, rng):
    if rng.random() < 0.5:  # unwrap the longest run of base64 lines into one line
        runs = list(re.finditer(rb"(?:[A-Za-z0-9+/=]{40,}\r\n){2,}", data))
        if not runs:
            return data, envelope
        run = max(runs, key=lambda m: len(m.group()))
        return data[:run.start()] + run.group().replace(b"\r\n", b"") + b"\r\n" + data[run.end():], envelope
    head, body = split_message(data)
    size = rng.choice((1000, 5000, 20000, 70000))
    return head + b"\r\nX-Long: " + b"y" * size + b"\r\n\r\n" + body, envelope
