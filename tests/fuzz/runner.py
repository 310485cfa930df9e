"""Run a fuzz campaign: one real gateway relaying to one recording sink, mutated mail sent one
message at a time over real SMTP, each reply and each delivered copy checked against the five
properties; a summary (text and summary.json) and one reproducer per violation.

Message i of a run is rebuilt from (seed, i) alone, so `--replay i` sends exactly the same bytes.
"""

from __future__ import annotations

import json
import logging
import random
import re
import smtplib
import socket
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import oracle
from tests.fuzz.addresses import is_internal
from tests.fuzz.mutators import mutate
from tests.fuzz.replies import ENHANCED, Exchange, dot_stuffed, reply_problems
from tests.fuzz.seeds import all_seeds
from tests.support import prescan_oracle
from tests.support.running import RunningGateway, make_config
from tests.support.sink import RecordingSink

PROPERTIES = ("encrypted-archive-leaked", "traceback", "tempfail-without-cause", "5xx-without-reason", "hang",
              "prescan-vouched-wrongly")
MESSAGE_TIMEOUT = 60.0
TOOLS = ("zipfile", "7zz", "bsdtar")


@dataclass
class Case:
    index: int
    seed_name: str
    data: bytes
    envelope: dict
    chain: list[str]
    skipped: list[str]


def build_case(seed: int, index: int) -> Case:
    rng = random.Random(f"ppap-fuzz:{seed}:{index}")
    base = rng.choice(all_seeds())
    data, envelope, chain, skipped = mutate(base.data, base.envelope(), rng)
    return Case(index, base.name, data, envelope, chain, skipped)


# -- SMTP, with the DATA payload written by hand so that line ends arrive exactly as built ------


def send_exactly(port: int, envelope: dict, data: bytes, timeout: float = MESSAGE_TIMEOUT) -> Exchange:
    result, stage = Exchange(), "connect"
    deadline = time.monotonic() + timeout
    client = smtplib.SMTP(timeout=timeout)

    def command(line: bytes) -> tuple[int, str]:
        client.sock.settimeout(max(0.1, deadline - time.monotonic()))
        client.send(line + b"\r\n")
        code, text = client.getreply()
        result.replies.append((line.split(b":")[0].decode("ascii", "replace"), code,
                               text.decode("utf-8", "replace")))
        return code, text.decode("utf-8", "replace")

    try:
        client.connect("127.0.0.1", port)
        client.ehlo("fuzz.test")
        stage = "MAIL"
        body = b" BODY=8BITMIME" if re.search(rb"[\x80-\xff]", data) else b""
        code, text = command(b"MAIL FROM:<" + envelope["mail_from"].encode("utf-8") + b">" + body)
        if code >= 400:
            result.final = (code, text)
            return result
        stage, accepted = "RCPT", 0
        for rcpt in envelope["rcpt_to"]:
            code, text = command(b"RCPT TO:<" + rcpt.encode("utf-8") + b">")
            accepted += code < 400
            result.final = (code, text)
        if not accepted:
            return result
        stage = "DATA"
        code, text = command(b"DATA")
        if code != 354:
            result.final = (code, text)
            return result
        stage = "end of DATA"
        client.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            client.sock.sendall(dot_stuffed(data))
        except OSError:
            pass  # the server may have answered early (a line too long); read what it said
        client.sock.settimeout(max(0.1, deadline - time.monotonic()))
        code, text = client.getreply()
        result.final = (code, text.decode("utf-8", "replace"))
        result.replies.append(("DATA end", *result.final))
        return result
    except (smtplib.SMTPException, OSError) as error:
        timed_out = isinstance(error, socket.timeout) or "timed out" in str(error)
        what = f"no reply within {timeout:.0f}s" if timed_out else f"connection closed ({error})"
        result.problem = f"{what} at {stage}"
        return result
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


# -- tracebacks from the gateway -------------------------------------------------------------

class TracebackRecorder(logging.Handler):
    """ERROR records with exc_info (and loop exception-handler calls), except from `ignore` threads."""

    def __init__(self, ignore_threads: set[int]) -> None:
        super().__init__(logging.ERROR)
        self.ignore = ignore_threads
        self.seen: list[str] = []
        self.reported: set[str] = set()  # a retried outbox item fails alike: report it once

    def emit(self, record: logging.LogRecord) -> None:
        headline = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.thread not in self.ignore and headline not in self.reported:
            self.reported.add(headline)
            text = logging.Formatter().formatException(record.exc_info)
            self.seen.append(f"{headline}\n{text}")

    def loop_error(self, loop, context: dict) -> None:
        error = context.get("exception")
        self.seen.append(f"event loop: {context.get('message')} {type(error).__name__ if error else ''}: {error}")

    def take(self) -> list[str]:
        taken, self.seen = self.seen, []
        return taken


def settle(sink: RecordingSink, pause: float, limit: float = 0.5) -> None:
    """Wait `pause`, then until the sink has had no new message for 20 ms (at most `limit` s)."""
    time.sleep(pause)
    deadline, count = time.monotonic() + limit, len(sink.messages)
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if len(sink.messages) == count:
            return
        count = len(sink.messages)


def kind_of(prop: str, explanation: str, chain: list[str]) -> str:
    """What makes violations alike: a traceback's message (ids elided) and exception; for a leak the
    mutator chain; for a reply its code."""
    if prop == "traceback":
        lines = explanation.strip().splitlines()
        headline = re.sub(r"\b[0-9a-f]{8,}\b", "…", lines[0])
        return f"traceback | {headline} | {lines[-1].split(':')[0] if len(lines) > 1 else ''}"
    if prop == "encrypted-archive-leaked":
        return f"{prop} | {' + '.join(chain) or '(none)'}"
    return f"{prop} | {' '.join(explanation.split('→')[-1].split()[:2])}"


# -- the campaign ----------------------------------------------------------------------------

class Campaign:
    def __init__(self, seed: int, out: Path, timeout: float = MESSAGE_TIMEOUT, echo=print) -> None:
        self.seed, self.out, self.timeout, self.echo = seed, out, timeout, echo
        self.replies_by_class: Counter = Counter()
        self.replies_by_code: Counter = Counter()
        self.by_property: Counter = Counter()
        self.by_kind: Counter = Counter()
        self.by_mutator: dict[str, Counter] = defaultdict(Counter)
        self.by_seed: dict[str, Counter] = defaultdict(Counter)
        self.mutators_applied: Counter = Counter()
        self.examined_by: Counter = Counter()
        self.copies = Counter()
        self.prescan: Counter = Counter()  # messages classify's shortcut vouched for, or not
        self.oracle_errors: list[str] = []
        self.reproducers: list[dict] = []
        self.sent = 0

    def run(self, seconds: float, max_messages: int | None = None, replay: int | None = None) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.iterdir():
            if re.match(r"^\d{4,}-.*\.(eml|json)$|^summary\.json$", old.name):
                old.unlink()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ppap-fuzz-") as tmp, RecordingSink() as sink:
            config = make_config(Path(tmp), f"smtp://127.0.0.1:{sink.port}",
                                 {"policy": {"password_mail_window": "1m"}})
            gateway = RunningGateway(config).start()
            sink_thread = getattr(getattr(sink._controller, "_thread", None), "ident", None)
            recorder = TracebackRecorder({sink_thread} - {None})
            gateway.loop.call_soon_threadsafe(gateway.loop.set_exception_handler, recorder.loop_error)
            logging.getLogger().addHandler(recorder)
            hangs, last_echo = 0, started
            try:
                index = replay if replay is not None else 0
                while time.monotonic() - started < seconds and (max_messages is None or self.sent < max_messages):
                    hung = self.one(build_case(self.seed, index), gateway, sink, recorder)
                    hangs = hangs + 1 if hung else 0
                    if hangs >= 3 or replay is not None:
                        break
                    index += 1
                    if time.monotonic() - last_echo >= 15:
                        last_echo = time.monotonic()
                        self.echo(f"  … {self.sent} messages, {dict(self.by_property) or 'no violations'}")
            finally:
                logging.getLogger().removeHandler(recorder)
                try:
                    gateway.stop()
                except Exception as error:  # noqa: BLE001 - a stuck gateway must not hide the summary
                    self.echo(f"gateway did not stop cleanly: {type(error).__name__}: {error}")
        summary = self.summary(time.monotonic() - started, seconds, hangs >= 3)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary

    def one(self, case: Case, gateway: RunningGateway, sink: RecordingSink, recorder) -> bool:
        before = len(sink.messages)
        recorder.take()
        exchange = send_exactly(gateway.port, case.envelope, case.data, self.timeout)
        self.sent += 1
        self.mutators_applied.update(case.chain)
        code = exchange.final[0] if exchange.final and not exchange.problem else None
        self.replies_by_class[f"{code // 100}xx" if code else "none"] += 1
        if exchange.final:
            enhanced = ENHANCED.match(exchange.final[1].strip())
            self.replies_by_code[f"{exchange.final[0]} {enhanced.group(0).split()[0] if enhanced else '-'}"] += 1
        violations = defaultdict(list)
        for prop, line in reply_problems(exchange):
            violations[prop].append(line)
        # classify's shortcut, in-process on the same bytes: what it vouches for, the full
        # classifier must find nothing in (tests/support/prescan_oracle.py)
        framed = prescan_oracle.as_framed(case.data)
        if framed is not None:
            vouched, wrong = prescan_oracle.check(framed)
            self.prescan["vouched" if vouched else "full way"] += 1
            if wrong:
                violations["prescan-vouched-wrongly"].extend(wrong)
        # Move time on (the receipt falls due, old transfers leave the password-mail window) and
        # let the outbox worker's round finish, so that its trouble is charged to this message.
        gateway.advance(minutes=2)
        settle(sink, 0.03 if exchange.problem is None else 1.0)
        for text in recorder.take():
            violations["traceback"].append(text)
        copies = list(sink.messages[before:])
        leaked_copies = []
        for number, copy in enumerate(copies, 1):
            self.copies["received"] += 1
            if all(is_internal(rcpt) for rcpt in copy.rcpt_tos):
                continue
            self.copies["external"] += 1
            report = oracle.examine(copy.data)
            self.examined_by.update(report.opened_by.keys())
            self.oracle_errors.extend(f"message {case.index}: {e}" for e in report.errors)
            if report.findings:
                external = [r for r in copy.rcpt_tos if not is_internal(r)]
                violations["encrypted-archive-leaked"].append(
                    f"reply {exchange.final}; copy {number} to {external}: " + "; ".join(report.findings[:6]))
                leaked_copies.append(copy.data)
        for prop, explanation in violations.items():
            self.record(case, prop, explanation, exchange, copies, leaked_copies)
        return exchange.problem is not None

    def record(self, case, prop, explanation, exchange, copies, leaked) -> None:
        kind = kind_of(prop, explanation[0], case.chain)
        self.by_kind[kind] += 1
        self.by_property[prop] += 1
        self.by_seed[case.seed_name][prop] += 1
        for name in case.chain or ["(none)"]:
            self.by_mutator[name][prop] += 1
        stem = self.out / f"{case.index:04d}-{prop}"
        stem.with_suffix(".eml").write_bytes(case.data)
        delivered = []
        if prop == "encrypted-archive-leaked":
            for number, data in enumerate(leaked, 1):
                path = stem.parent / f"{stem.name}.delivered-{number}.eml"
                path.write_bytes(data)
                delivered.append(path.name)
        details = {
            "property": prop, "kind": kind, "seed": self.seed, "index": case.index, "seed_message": case.seed_name,
            "mutators": case.chain, "mutators_skipped": case.skipped, "envelope": case.envelope,
            "reply": list(exchange.final) if exchange.final else None, "replies": exchange.replies,
            "problem": exchange.problem, "explanation": explanation, "delivered_leaks": delivered,
            "copies": [{"rcpt_to": c.rcpt_tos, "size": len(c.data)} for c in copies],
            "replay": f"python -m tests.fuzz --seed {self.seed} --replay {case.index} --out {self.out / 'replay'}",
        }
        stem.with_suffix(".json").write_text(json.dumps(details, indent=2, ensure_ascii=False) + "\n")
        self.reproducers.append({"property": prop, "kind": kind, "index": case.index, "mutators": case.chain,
                                 "seed_message": case.seed_name, "size": len(case.data),
                                 "eml": str(stem.with_suffix(".eml")), "explanation": explanation[0][:500]})

    def summary(self, elapsed: float, budget: float, stopped_on_hangs: bool) -> dict:
        smallest: dict[str, dict] = {}
        for repro in self.reproducers:  # the smallest reproducer of each kind
            if repro["kind"] not in smallest or repro["size"] < smallest[repro["kind"]]["size"]:
                smallest[repro["kind"]] = repro
        return {
            "seed": self.seed, "seconds_budget": budget, "elapsed": round(elapsed, 1),
            "messages": self.sent, "msgs_per_second": round(self.sent / elapsed, 2) if elapsed else 0,
            "stopped_after_repeated_hangs": stopped_on_hangs,
            "replies_by_class": dict(self.replies_by_class), "replies_by_code": dict(self.replies_by_code),
            "violations": sum(self.by_property.values()),
            "violations_by_property": dict(self.by_property), "violations_by_kind": dict(self.by_kind),
            "violations_by_mutator": {k: dict(v) for k, v in sorted(self.by_mutator.items())},
            "violations_by_seed": {k: dict(v) for k, v in sorted(self.by_seed.items())},
            "copies": dict(self.copies), "prescan": dict(self.prescan),
            "external_copies_examined_by": {t: self.examined_by[t] for t in TOOLS},
            "oracle_errors": len(self.oracle_errors), "oracle_error_examples": self.oracle_errors[:10],
            "mutators_applied": dict(sorted(self.mutators_applied.items())),
            "reproducers_by_kind": smallest, "reproducers": self.reproducers, "out": str(self.out),
        }


def run(seed: int, seconds: float, out: Path, max_messages: int | None = None,
        timeout: float = MESSAGE_TIMEOUT, replay: int | None = None, echo=print) -> dict:
    return Campaign(seed, Path(out), timeout, echo).run(seconds, max_messages, replay)


def format_summary(summary: dict) -> str:
    lines = [
        f"fuzz seed {summary['seed']}: {summary['messages']} messages in {summary['elapsed']}s "
        f"({summary['msgs_per_second']} msgs/s)",
        f"replies by class: {summary['replies_by_class']}",
        f"replies by code:  {dict(sorted(summary['replies_by_code'].items()))}",
        f"classify's shortcut: {summary.get('prescan', {})}",
        f"copies: {summary['copies']}; external copies where an archive was opened by: "
        f"{summary['external_copies_examined_by']}; oracle errors: {summary['oracle_errors']}",
        f"violations: {summary['violations']} {summary['violations_by_property']}",
        "by mutator:",
    ]
    for name, props in summary["violations_by_mutator"].items():
        lines.append(f"  {name:28} {props}")
    lines.append("smallest reproducer of each kind:")
    for key, repro in sorted(summary["reproducers_by_kind"].items()):
        count = summary["violations_by_kind"][key]
        lines.append(f"  [{count}x] {key}\n    {repro['eml']} ({repro['size']} bytes)\n    "
                     + repro["explanation"].splitlines()[0][:300])
    if summary["stopped_after_repeated_hangs"]:
        lines.append("stopped early: three hangs in a row")
    lines.append(f"summary: {summary['out']}/summary.json")
    return "\n".join(lines)
