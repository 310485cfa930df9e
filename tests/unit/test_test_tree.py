"""The test tree keeps its shape, so that `make test-fast` stays fast and honest:

* no test module imports another test module: what tests share lives in tests/support/ (and
  fixtures in the conftest.py files);
* nothing under tests/unit/ opens a socket or starts a process, not by itself and not through a
  helper of tests/: such tests belong under tests/e2e/, which is marked `e2e` by directory;
* no unit module marks itself `e2e` (it would silently drop out of `make test-fast`).

tests/unit/conftest.py also refuses sockets and processes at run time; this module names the
import or the call in the source, which is where the fix goes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
UNIT = TESTS / "unit"

# Modules whose use means sockets or processes: the standard library's and our helpers' (each of
# these helpers starts a server, a client, a gateway or a process).
FORBIDDEN_IN_UNIT = {
    "socket", "socketserver", "ssl", "smtplib", "http.client", "http.server", "urllib.request",
    "subprocess", "multiprocessing", "asyncio.subprocess", "aiosmtplib", "aiosmtpd.controller",
    "aiohttp.test_utils", "pytest_aiohttp", "playwright",
    "tests.support.sink", "tests.support.raw_sink", "tests.support.running",
    "tests.support.clamav", "tests.support.postfix", "tests.support.sqlite_lock",
    "tests.support.processes", "tests.support.portal_harness", "tests.support.portal_http",
    "tests.fuzz.runner", "tests.fuzz.oracle",
}
# Calls that open a listener, a connection or a process without importing anything above.
FORBIDDEN_CALLS_IN_UNIT = {
    "start_server", "start_unix_server", "open_connection", "open_unix_connection",
    "create_server", "create_unix_server", "create_connection", "create_unix_connection",
    "create_datagram_endpoint", "sock_connect", "create_subprocess_exec", "create_subprocess_shell",
    "urlopen", "Popen", "fork", "TCPSite", "UnixSite", "SockSite", "run_app",
    "start_smtp_server",
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 3 and parts[0] == "tests" and parts[1] in ("unit", "e2e") \
        and parts[-1].startswith("test_")


def imports_of(path: Path, package: str | None = None) -> list[tuple[int, list[str]]]:
    """(line, names) for every import statement in the file, anywhere in it. `from a import b`
    names a and a.b (b may be a module: `from tests.unit import test_x`); relative imports are
    resolved against `package` (by default the file's own)."""
    if package is None:
        package = module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, [base] + [f"{base}.{alias.name}" for alias in node.names]))
    return found


def source_of(name: str) -> Path | None:
    """The file of a module of this repository's tests package, if it is one."""
    if not name.startswith("tests."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def forbidden_uses(path: Path, package: str | None = None, find=source_of) -> list[str]:
    """Forbidden imports of the file itself and of the tests/ helpers it imports, transitively;
    one line per import statement, with the chain of helpers that led there."""
    problems, seen = [], {path}
    queue: list[tuple[Path, str | None, list[str]]] = [(path, package, [])]
    while queue:
        current, current_package, chain = queue.pop()
        for line, names in imports_of(current, current_package):
            where = " → ".join([*chain, f"{shown(current)}:{line}"])
            prefixes = [".".join(n.split(".")[: i + 1]) for n in names for i in range(n.count(".") + 1)]
            hit = next((prefix for prefix in prefixes if prefix in FORBIDDEN_IN_UNIT), None)
            if hit is not None:
                problems.append(f"{where} imports {hit}")
                continue
            for name in names:
                helper = find(name)
                if helper is not None and helper not in seen and not is_test_module(name):
                    seen.add(helper)
                    queue.append((helper, None if helper.is_relative_to(ROOT) else "tests.support",
                                  [*chain, f"{shown(current)}:{line}"]))
    return problems


def forbidden_calls(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else \
                function.id if isinstance(function, ast.Name) else None
            if name in FORBIDDEN_CALLS_IN_UNIT:
                problems.append(f"{shown(path)}:{node.lineno} calls {name}()")
    return problems


def marks_itself_e2e(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "e2e" \
                and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
            problems.append(f"{shown(path)}:{node.lineno} marks itself e2e")
    return problems


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


# tests/unit/conftest.py is the run-time half of this guard: it imports socket and subprocess to refuse them.
UNIT_MODULES = [p for p in python_files(UNIT) if p.name.startswith("test_")]


def reruns_on_postgresql(path: Path, name: str) -> bool:
    """The one allowed import of a test module: tests/e2e/test_*_postgresql.py runs a store
    module's unit tests again with its fixtures pointed at a private PostgreSQL."""
    return (path.parent == TESTS / "e2e" and path.name.endswith("_postgresql.py")
            and name.startswith("tests.unit.test_"))


def test_no_module_of_the_test_tree_imports_a_test_module() -> None:
    problems = [
        f"{shown(path)}:{line} imports {name}"
        for path in python_files(TESTS) + python_files(ROOT / "bench")
        for line, names in imports_of(path)
        for name in names
        if is_test_module(name) and not reruns_on_postgresql(path, name)
    ]
    assert problems == [], "move what is shared to tests/support/ or a conftest.py:\n" + \
        "\n".join(problems)


def test_every_test_module_is_a_unit_or_an_end_to_end_test() -> None:
    """`make test-fast` runs tests/unit/ alone: a test elsewhere would be in neither suite's sight."""
    stray = [shown(path) for path in python_files(TESTS) if path.name.startswith("test_")
             and path.parent not in (UNIT, TESTS / "e2e")]
    assert stray == []


@pytest.mark.parametrize("path", UNIT_MODULES, ids=lambda path: path.name)
def test_unit_modules_open_no_socket_and_start_no_process(path: Path) -> None:
    problems = forbidden_uses(path) + forbidden_calls(path) + marks_itself_e2e(path)
    assert problems == [], (
        "move these tests to tests/e2e/, or import only the socket-free helpers (FakeClock from "
        "tests.support.clock, CORPUS and corpus_mail from tests.support.corpus, make_config and "
        "PUBLIC_URL from tests.support.config):\n" + "\n".join(problems))


# -- the checks above can fail -------------------------------------------------------------------


def probe(tmp_path: Path, text: str, name: str = "test_probe.py") -> Path:
    """A throw-away module, checked as if it lived in tests/unit/."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, expected", [
    ("import socket\n", "imports socket"),
    ("from aiohttp.test_utils import TestClient\n", "imports aiohttp.test_utils"),
    ("from aiohttp import test_utils\n", "imports aiohttp.test_utils"),
    ("import subprocess as sp\n", "imports subprocess"),
    ("def f():\n    import smtplib\n", "imports smtplib"),
    ("from tests.support.sink import RecordingSink\n", "imports tests.support.sink"),
    ("from tests.support import running\n", "imports tests.support.running"),
    ("from ..support.raw_sink import RawSink\n", "imports tests.support.raw_sink"),
    ("from tests.support.evasions import ordinary\nimport tests.support.handmade\n", None),
    ("import asyncio\nasyncio.run(asyncio.start_server(None, '127.0.0.1', 0))\n", "calls start_server()"),
    ("def f(loop):\n    return loop.create_connection(None, 'h', 1)\n", "calls create_connection()"),
    ("import pytest\npytestmark = pytest.mark.e2e\n", "marks itself e2e"),
])
def test_the_unit_guard_names_each_way_to_a_socket(tmp_path: Path, text: str, expected: str | None) -> None:
    path = probe(tmp_path, text)
    problems = forbidden_uses(path, "tests.unit") + forbidden_calls(path) + marks_itself_e2e(path)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].endswith(expected), problems


def test_a_helper_that_opens_sockets_is_found_through_the_chain(tmp_path: Path) -> None:
    helper = probe(tmp_path, "import smtplib\n", "helper.py")
    path = probe(tmp_path, "from tests.support.helper import send\n")
    find = lambda name: helper if name == "tests.support.helper" else source_of(name)  # noqa: E731
    (problem,) = forbidden_uses(path, "tests.unit", find)
    assert problem == "test_probe.py:1 → helper.py:1 imports smtplib"


@pytest.mark.parametrize("text", [
    "from tests.unit.test_deliver import run\n",
    "from tests.e2e import test_channels\n",
    "import tests.e2e.test_relay_corpus as corpus\n",
    "from .test_portal_limits import T0\n",
])
def test_the_import_guard_sees_every_spelling_of_a_test_module_import(tmp_path: Path, text: str) -> None:
    path = probe(tmp_path, text)
    names = [name for _, found in imports_of(path, "tests.unit") for name in found if is_test_module(name)]
    assert names, text


def test_the_run_time_guard_refuses_a_connection_even_when_the_code_under_test_catches_errors(
    no_sockets_or_processes: list[str],
) -> None:
    """tests/unit/conftest.py: SmtpNextHop.check() turns network errors into False; the guard's
    refusal still reaches the test, and the attempt is on record for the teardown check."""
    import asyncio

    from gateway.outbound.smtp import SmtpNextHop

    hop = SmtpNextHop("127.0.0.1", 9, starttls="off", timeout=1.0, helo_name="gw.test")
    with pytest.raises(BaseException) as refused:
        asyncio.run(hop.check())
    assert type(refused.value).__name__ == "SocketOrProcessInUnitTest"
    assert no_sockets_or_processes and no_sockets_or_processes[0].split()[0] in ("resolve", "connect")
    no_sockets_or_processes.clear()  # seen: the teardown check is for tests that did not expect it
