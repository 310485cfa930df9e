"""Unit tests run without the network and without child processes: connecting, binding, resolving
a name or starting a program fails the test, naming what it tried. (asyncio's own self-pipe, a
socketpair, is still allowed.) A test that needs any of these belongs under tests/e2e/;
tests/unit/test_test_tree.py checks the imports statically.

The refusal is a BaseException, so code under test that catches Exception around a connection
cannot swallow it; and every attempt is recorded and fails the test at teardown even if something
caught it anyway."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest


class SocketOrProcessInUnitTest(BaseException):
    pass


@pytest.fixture(autouse=True)
def no_sockets_or_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    attempts: list[str] = []

    def refuse(what: str):
        def refused(*args, **kwargs):
            attempt = f"{what} {args[1:] if what.endswith('socket') else args}"
            attempts.append(attempt)
            raise SocketOrProcessInUnitTest(f"a unit test tried to {attempt}: move it to tests/e2e/")
        return refused

    for method in ("connect", "connect_ex", "bind", "listen", "sendto"):
        monkeypatch.setattr(socket.socket, method, refuse(f"{method} a socket"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("resolve"))
    monkeypatch.setattr(socket, "create_connection", refuse("open a connection to"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process"))
    yield attempts
    assert attempts == [], f"unit tests open no socket and start no process: {attempts}"
