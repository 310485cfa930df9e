"""The clamd client against a real, private clamd (EICAR-only database) and against fake servers
that misbehave: refused, missing, silent, garbage."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pyzipper

from gateway.scan import (
    ClamdScanner,
    ScanError,
    ScanResult,
    ScanUnavailable,
)
from tests.support.clamav import EICAR, EICAR_REPORTED, ClamdNotInstalled, ClamdProcess

CORPUS_FILES = Path(__file__).resolve().parents[1] / "corpus" / "files"
STREAM_MAX_LENGTH = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdProcess]:
    with ClamdProcess(
        tmp_path_factory.mktemp("clamd"), stream_max_length=STREAM_MAX_LENGTH
    ) as running:
        print(f"clamd started in {running.startup_seconds:.2f}s")
        yield running


def scan(address: str, data, **options) -> ScanResult:
    scanner = ClamdScanner(address, timeout=options.pop("timeout", 10.0), **options)
    return asyncio.run(scanner.scan(data))


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the real clamd --------------------------------------------------------------------------


def test_eicar_string_is_infected_with_the_eicar_signature(clamd: ClamdProcess) -> None:
    assert scan(clamd.address, EICAR) == ScanResult(clean=False, signature=EICAR_REPORTED)


def test_eicar_com_from_the_corpus_zip_is_infected(clamd: ClamdProcess) -> None:
    with pyzipper.AESZipFile(CORPUS_FILES / "10_eicar_zipcrypto.zip") as archive:
        eicar_com = archive.read("eicar.com", pwd=b"infected")
    result = scan(clamd.address, [eicar_com])
    assert not result.clean
    assert result.signature == EICAR_REPORTED


def test_plain_pdf_is_clean(clamd: ClamdProcess) -> None:
    pdf = (CORPUS_FILES / "12a_plain.pdf").read_bytes()
    assert scan(clamd.address, pdf) == ScanResult(clean=True, signature=None)


def test_five_megabytes_of_random_data_streamed_in_chunks_are_clean(clamd: ClamdProcess) -> None:
    async def random_chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield os.urandom(256 * 1024)  # re-cut into 64 KiB pieces on the wire

    assert scan(clamd.address, random_chunks()) == ScanResult(clean=True)


def test_eicar_split_across_empty_and_tiny_chunks_is_still_found(clamd: ClamdProcess) -> None:
    chunks = [b"", EICAR[:10], b"", EICAR[10:30], bytearray(EICAR[30:]), b""]
    assert scan(clamd.address, chunks, chunk_size=7).signature == EICAR_REPORTED


def test_empty_stream_is_clean(clamd: ClamdProcess) -> None:
    assert scan(clamd.address, b"").clean


def test_stream_over_clamds_limit_is_a_scan_error(clamd: ClamdProcess) -> None:
    too_big = (b"\0" * (1024 * 1024) for _ in range(STREAM_MAX_LENGTH // (1024 * 1024) + 2))
    with pytest.raises(ScanError, match="size limit exceeded"):
        scan(clamd.address, too_big)


def test_stream_over_max_stream_stops_before_clamd_sees_it_all(clamd: ClamdProcess) -> None:
    with pytest.raises(ScanError, match="larger than 100000 bytes"):
        scan(clamd.address, [b"x" * 60_000, b"y" * 60_000], max_stream=100_000)


def test_concurrent_scans_each_get_their_own_verdict(clamd: ClamdProcess) -> None:
    scanner = ClamdScanner(clamd.address, timeout=10)
    files = [EICAR, b"hello", EICAR + b"\r\n", os.urandom(100_000)]

    async def scan_all() -> list[ScanResult]:
        return await asyncio.gather(*(scanner.scan(data) for data in files))

    assert [result.clean for result in asyncio.run(scan_all())] == [False, True, False, True]


def test_a_failing_source_propagates_and_leaves_clamd_usable(clamd: ClamdProcess) -> None:
    def broken_source() -> Iterator[bytes]:
        yield b"first part"
        raise OSError("blob unreadable")

    with pytest.raises(OSError, match="blob unreadable"):
        scan(clamd.address, broken_source())
    assert scan(clamd.address, EICAR).signature == EICAR_REPORTED


def test_ping_and_version_of_a_running_clamd(clamd: ClamdProcess) -> None:
    scanner = ClamdScanner(clamd.address, timeout=5)
    assert asyncio.run(scanner.ping()) is True
    assert asyncio.run(scanner.version()).startswith("ClamAV 1.")


def test_the_socket_path_alone_is_accepted_as_an_address(clamd: ClamdProcess) -> None:
    assert scan(str(clamd.socket_path), EICAR).signature == EICAR_REPORTED


# --- clamd gone ------------------------------------------------------------------------------


def test_stopped_clamd_is_unavailable_at_once_and_does_not_answer_ping(tmp_path: Path) -> None:
    with ClamdProcess(tmp_path) as short_lived:
        scanner = ClamdScanner(short_lived.address, timeout=5)
        assert asyncio.run(scanner.ping()) is True
    began = time.monotonic()
    with pytest.raises(ScanUnavailable, match="clamd at unix:"):
        asyncio.run(scanner.scan(EICAR))
    assert asyncio.run(scanner.ping()) is False
    assert time.monotonic() - began < 1.0


def test_missing_unix_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ScanUnavailable, match="No such file"):
        scan(f"unix:{tmp_path}/nothing.sock", EICAR)


def test_stale_unix_socket_nobody_listens_on_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # bound, never listening: what a killed clamd leaves behind
    with pytest.raises(ScanUnavailable, match="refused"):
        scan(f"unix:{path}", EICAR)


def test_closed_tcp_port_is_unavailable_and_does_not_answer_ping() -> None:
    address = f"127.0.0.1:{free_tcp_port()}"
    with pytest.raises(ScanUnavailable, match="refused"):
        scan(address, EICAR)
    assert asyncio.run(ClamdScanner(address, timeout=2).ping()) is False


# --- servers that are not a healthy clamd ----------------------------------------------------


@asynccontextmanager
async def fake_clamd(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def replying(reply: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(reply)
        await writer.drain()

    return answer


def scan_against(answer, data: bytes = EICAR, timeout: float = 2.0) -> ScanResult:
    async def run() -> ScanResult:
        async with fake_clamd(answer) as address:
            return await ClamdScanner(address, timeout=timeout).scan(data)

    return asyncio.run(run())


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n\0",
        b"UNKNOWN COMMAND\0",
        b"stream: FOUND\0",
        b"\xff\xfe\x00",
        b"stream: OK",  # no terminating NUL before the connection closes
        b"",
        b"A" * 10_000,
    ],
    ids=["http", "unknown-command", "found-without-name", "binary", "unterminated", "silent-close",
         "endless-line"],
)
def test_garbage_reply_is_unavailable_not_a_verdict(reply: bytes) -> None:
    with pytest.raises(ScanUnavailable):
        scan_against(replying(reply))


def test_hostile_signature_name_is_made_printable_and_short() -> None:
    name = "\x1b[31mTrojan\r\nBcc: x@evil.example " + "W" * 1000
    result = scan_against(replying(f"stream: {name} FOUND\0".encode()))
    assert not result.clean and result.signature is not None
    assert len(result.signature) == 200
    assert result.signature.startswith("?[31mTrojan??Bcc: x@evil.example WWW")


def test_any_clamd_error_reply_is_a_scan_error() -> None:
    with pytest.raises(ScanError, match="Can't allocate memory"):
        scan_against(replying(b"stream: Can't allocate memory ERROR\0"))


def test_server_that_never_answers_is_unavailable_within_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    began = time.monotonic()
    with pytest.raises(ScanUnavailable, match="within 0.3s waiting for the verdict"):
        scan_against(silent, timeout=0.3)
    assert time.monotonic() - began < 1.5


def test_server_that_never_reads_is_unavailable_within_the_timeout() -> None:
    with socket.socket() as listener:  # accepts at the kernel level, never reads a byte
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        scanner = ClamdScanner(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        began = time.monotonic()
        with pytest.raises(ScanUnavailable, match="sending the stream"):
            asyncio.run(scanner.scan(b"\0" * (64 * 1024 * 1024)))
    assert time.monotonic() - began < 3.0


def test_ping_of_a_server_that_answers_nonsense_is_false() -> None:
    async def run() -> bool:
        async with fake_clamd(replying(b"PANG\0")) as address:
            return await ClamdScanner(address, timeout=1).ping()

    assert asyncio.run(run()) is False


# --- the test support ----------------------------------------------------------------------


def test_eicar_constant_is_the_68_byte_test_string() -> None:
    assert len(EICAR) == 68
    assert hashlib.md5(EICAR).hexdigest() == "44d88612fea8a8f36de82e1278abb02f"


def test_missing_clamd_binary_fails_loudly_naming_make_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.support.clamav.shutil.which", lambda *args, **kwargs: None)
    with pytest.raises(ClamdNotInstalled, match="`make test` installs it"):
        ClamdProcess(tmp_path).start()
