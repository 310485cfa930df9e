"""Bind the listening sockets that `serve`'s supervisor hands to its workers.

SMTP and the portal get one socket per worker position, all bound to the same address with
SO_REUSEPORT, so the kernel spreads new connections over the workers (asyncio accepts every
pending connection when it wakes, so one shared socket would let one worker take a burst).
The supervisor keeps every socket open: connections queued on the socket of a worker that died
wait for its replacement, and a reload's new worker takes over its position's socket.

SO_REUSEPORT would also let a second `serve` join the group silently; so the address is first
bound once without it, and an address in use stops the start as it always did.
"""

from __future__ import annotations

import errno
import socket


def _addresses(host: str, port: int) -> list[tuple]:
    found = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    return list(dict.fromkeys((family, address) for family, _t, _p, _c, address in found))


def _listening(family: int, address: tuple, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _refuse_if_in_use(family: int, address: tuple) -> None:
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise OSError(error.errno, f"{address[0]}:{address[1]} is in use") from None
        raise
    finally:
        probe.close()


def bind_group(host: str, port: int, positions: int) -> list[tuple[socket.socket, ...]]:
    """`positions` sets of listening sockets on every address of host:port, one set per worker
    position (SO_REUSEPORT when more than one). Port 0: the first socket picks a free port."""
    groups: list[list[socket.socket]] = [[] for _ in range(positions)]
    chosen = port
    try:
        for family, address in _addresses(host, port):
            address = (address[0], chosen, *address[2:])
            if chosen:
                _refuse_if_in_use(family, address)
            for group in groups:
                sock = _listening(family, address, reuse_port=positions > 1)
                group.append(sock)
                chosen = sock.getsockname()[1]  # the rest of the group, and the host's other
                address = (address[0], chosen, *address[2:])  # addresses, on the same port
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return [tuple(group) for group in groups]
