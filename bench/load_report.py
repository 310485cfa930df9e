"""The load bench's tables: msgs/s per mail × sessions × path (medians of the rounds), the gateway's
CPU, memory and own time, the pending-work row, and issue 14's targets each with ✓ or ✗."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from load_paths import Cell, Measurement
from relay_throughput import percentile

MB = 1_000_000
MAIL_LABEL = {"2mb": "2 MB, AES ZIP", "2kb": "2 KB plain"}
PATH_LABEL = {"direct": "direct to sink", "postfix": "plain Postfix",
              "postfix+md": "Postfix + MIMEDefang (replace_with_url)", "gateway": "gateway alone",
              "postfix+gateway": "Postfix → gateway → Postfix"}


@dataclass
class Results:
    cells: list[Cell]
    paths: list[str]
    runs: list[Measurement]  # the table's measurements, every round
    pending: dict[int, list[Measurement]]  # pending transfers → its rounds (gateway alone, 2 KB)
    mail_bytes: dict[str, int]

    def of(self, path: str, cell: Cell) -> list[Measurement]:
        return [m for m in self.runs if m.path == path and m.cell == cell]

    def rate(self, path: str, cell: Cell) -> float | None:
        rates = [m.rate for m in self.of(path, cell)]
        return statistics.median(rates) if rates else None

    def cell(self, mail: str, sessions: int) -> Cell | None:
        return next((c for c in self.cells if c.mail == mail and c.sessions == sessions), None)


def _gateway_runs(runs: list[Measurement]) -> list[Measurement]:
    return [m for m in runs if m.gateway is not None]


def cpu_ms(runs: list[Measurement]) -> float | None:
    """Median over rounds of the gateway tree's CPU per message."""
    values = [1000 * m.gateway.usage.cpu_seconds / m.cell.messages for m in _gateway_runs(runs)]
    return statistics.median(values) if values else None


def peak_mb(runs: list[Measurement], pss: bool = False) -> float | None:
    """The largest peak over rounds: the sum of VmHWM, or (pss) the largest sampled sum of Pss."""
    values = [(m.gateway.usage.peak_pss_bytes if pss else m.gateway.usage.peak_rss_bytes) / MB
              for m in _gateway_runs(runs)]
    return max(values) if values else None


def handling(runs: list[Measurement], p: float) -> float | None:
    """Percentile of the gateway's own time per message (log `ms`), every round's messages pooled."""
    values = [ms for m in _gateway_runs(runs) for ms in m.gateway.handling_ms]
    return percentile(values, p) if values else None


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def rate_table(results: Results) -> list[str]:
    head = "| mail | sessions | " + " | ".join(PATH_LABEL[p] for p in results.paths) + " |"
    lines = [head, "|---|--:|" + "--:|" * len(results.paths)]
    for cell in results.cells:
        rates = [_num(results.rate(path, cell), 1 if cell.mail == "2mb" else 0) for path in results.paths]
        lines.append(f"| {MAIL_LABEL[cell.mail]} | {cell.sessions} | " + " | ".join(rates) + " |")
    return lines


def gateway_table(results: Results) -> list[str]:
    lines = [("| mail | sessions | path | gateway CPU ms/msg | peak RSS MB (sum of VmHWM) "
              "| peak memory MB (sampled sum of Pss) | own time p50 / p99 ms (log `ms`) "
              "| processes |"),
             "|---|--:|---|--:|--:|--:|--:|--:|"]
    for cell in results.cells:
        for path in ("gateway", "postfix+gateway"):
            runs = _gateway_runs(results.of(path, cell))
            if runs:
                lines.append(f"| {MAIL_LABEL[cell.mail]} | {cell.sessions} | {PATH_LABEL[path]} "
                             f"| {_num(cpu_ms(runs), 2)} | {_num(peak_mb(runs), 0)} "
                             f"| {_num(peak_mb(runs, pss=True), 0)} "
                             f"| {_num(handling(runs, 50), 0)} / {_num(handling(runs, 99), 0)} "
                             f"| {max(m.gateway.usage.processes for m in runs)} |")
    return lines


def pending_lines(results: Results) -> list[str]:
    if len(results.pending) != 2:
        return []
    none, many = sorted(results.pending)
    rate = {level: statistics.median(m.rate for m in runs) for level, runs in results.pending.items()}
    lines = ["| 2 KB plain, 20 sessions, gateway alone, same sender | msgs/s | gateway CPU ms/msg |",
             "|---|--:|--:|"]
    for level in (none, many):
        lines.append(f"| {level:,} transfers pending | {rate[level]:.0f} | {_num(cpu_ms(results.pending[level]), 2)} |")
    return lines


@dataclass
class Target:
    what: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: Results) -> list[Target]:
    small, big = results.cell("2kb", 20), results.cell("2mb", 20)
    found: list[Target] = []

    def add(what: str, value: float | None, goal: float, at_least: bool, unit: str = "×", digits: int = 2) -> None:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        measured = "not run" if value is None else f"{value:.{digits}f}{unit if unit == '×' else ' ' + unit}"
        found.append(Target(what, measured, f"{'≥' if at_least else '≤'} {goal:g}{unit if unit == '×' else ' ' + unit}", met))

    rate = lambda path, cell: results.rate(path, cell) if cell else None
    add("2 KB plain, 20 sessions: gateway alone / plain Postfix", _ratio(rate("gateway", small), rate("postfix", small)), 1.2, True)
    add("2 MB AES ZIP, 20 sessions: gateway alone / plain Postfix", _ratio(rate("gateway", big), rate("postfix", big)), 1.0, True)
    add("2 MB AES ZIP, 20 sessions: Postfix → gateway → Postfix / Postfix + MIMEDefang",
        _ratio(rate("postfix+gateway", big), rate("postfix+md", big)), 2.0, True)
    pending = None
    if len(results.pending) == 2:
        none, many = sorted(results.pending)
        pending = _ratio(*(statistics.median(m.rate for m in results.pending[level]) for level in (many, none)))
    add("2 KB plain, 20 sessions, 10,000 transfers of the sender pending / none", pending, 0.9, True)
    add("gateway CPU per plain 2 KB mail (20 sessions, gateway alone)",
        cpu_ms(results.of("gateway", small)) if small else None, 1, False, "ms")
    add("gateway CPU per 2 MB mail converted (20 sessions, gateway alone)",
        cpu_ms(results.of("gateway", big)) if big else None, 15, False, "ms")
    add("added latency p99, 2 MB at 20 sessions (gateway's log `ms`, end of DATA → its 250)",
        handling(results.of("gateway", big), 99) if big else None, 100, False, "ms", 0)
    found.append(memory_target(results))
    return found


def memory_target(results: Results) -> Target:
    """Every gateway-alone cell: the memory its processes hold together at their peak (the
    largest sampled sum of Pss: pages shared after the fork counted once) over 2 × bytes in
    flight + 80 MB, the worst one shown. Bytes in flight: one whole mail per session
    (smtp-source sends one at a time per session)."""
    worst: tuple[float, str] | None = None
    for cell in results.cells:
        peak = peak_mb(results.of("gateway", cell), pss=True)
        if peak is None:
            continue
        in_flight = cell.sessions * results.mail_bytes[cell.mail] / MB
        bound = 2 * in_flight + 80
        text = (f"{peak:.0f} MB at {MAIL_LABEL[cell.mail]} × {cell.sessions} "
                f"(in flight {cell.sessions} × {results.mail_bytes[cell.mail] / MB:.3f} MB → bound {bound:.0f} MB)")
        if worst is None or peak / bound > worst[0]:
            worst = (peak / bound, text)
    if worst is None:
        return Target("gateway peak RSS", "not run", "≤ 2 × bytes in flight + 80 MB", None)
    return Target("gateway peak memory (largest sampled sum of its processes' Pss), worst cell",
                  worst[1],
                  "≤ 2 × bytes in flight + 80 MB", worst[0] <= 1)


def target_table(results: Results) -> list[str]:
    lines = ["| target | measured | goal | met |", "|---|---|---|:-:|"]
    for t in targets(results):
        lines.append(f"| {t.what} | {t.measured} | {t.goal} | {'—' if t.met is None else '✓' if t.met else '✗'} |")
    return lines


def round_lines(results: Results) -> list[str]:
    """Every round's rate, in run order, so the spread behind each median is visible."""
    lines = []
    for cell in results.cells:
        parts = [f"{PATH_LABEL[p].split(' (')[0]} " + ", ".join(f"{m.rate:.0f}" for m in results.of(p, cell))
                 for p in results.paths]
        lines.append(f"- {MAIL_LABEL[cell.mail]} × {cell.sessions}: " + "; ".join(parts))
    for level, runs in sorted(results.pending.items()):
        lines.append(f"- pending {level:,}: " + ", ".join(f"{m.rate:.0f}" for m in runs))
    return lines
