import socket
from collections.abc import Iterator

import pytest

from tests.support.clamav import ClamdProcess
from tests.support.postgres import PostgresServer
from tests.support.running import RunningGateway, make_config
from tests.support.sink import RecordingSink


@pytest.fixture
def sink():
    with RecordingSink() as running:
        yield running


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound but not listening, and held for the whole
    test so nobody else can take it meanwhile."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def start_gateway(tmp_path, sink):
    """Factory: start a gateway relaying to the sink, with optional config changes."""
    started: list[RunningGateway] = []

    def start(document: dict | None = None, overrides: tuple[str, ...] = (), clock=None,
              next_hop_url: str | None = None) -> RunningGateway:
        url = next_hop_url or f"smtp://127.0.0.1:{sink.port}"
        gateway = RunningGateway(make_config(tmp_path, url, document, overrides), clock)
        started.append(gateway.start())
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def clamd(tmp_path_factory):
    """A real clamd on a private socket with an EICAR-only database (slow to start: shared)."""
    with ClamdProcess(tmp_path_factory.mktemp("clamd")) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A private PostgreSQL on a loopback port, fsync on (start-up takes seconds: shared)."""
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as running:
        yield running


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """A fresh, empty database on the shared server: each test its own."""
    return postgres_server.create_database()
