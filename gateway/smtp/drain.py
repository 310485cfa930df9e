"""Ending a listener's sessions the way operators expect of a mail service, on stop or reload.

A message in DATA (being received, or being relayed) finishes and gets its reply; a session
with no message under way is told `421 4.3.2` at once (RFC 5321 §3.8: a server that shuts down
says 421 before closing, and the client retries); a session between MAIL and DATA may finish its
message first. On stop the listener keeps accepting only to answer new clients 421; on reload it
stops accepting, and the new workers take new clients on the same socket.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

SHUTTING_DOWN = "421 4.3.2 {host} Service shutting down, try again later"


class DrainableSession(Protocol):
    def drain(self) -> None:
        """Close now with 421 if no message is under way; else once its reply is sent."""


class LiveSessions:
    """The listener's open sessions, and whether it is draining. Event loop only."""

    def __init__(self) -> None:
        self._sessions: set[DrainableSession] = set()
        self.draining = False
        self.refuse_new = False  # stopping: new sessions are greeted with 421
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def opened(self, session: DrainableSession) -> None:
        self._sessions.add(session)
        self._empty.clear()
        if self.draining:
            session.drain()

    def closed(self, session: DrainableSession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._empty.set()

    def drain(self, refuse_new: bool) -> None:
        self.draining, self.refuse_new = True, refuse_new
        for session in list(self._sessions):
            session.drain()

    async def wait_empty(self, timeout: float) -> bool:
        """True once every session has closed; False if some were still open at `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True


class SmtpListener:
    """The SMTP server of one worker and its sessions."""

    def __init__(self, servers: list[asyncio.base_events.Server], sessions: LiveSessions):
        self._servers, self.sessions = servers, sessions

    @property
    def port(self) -> int:
        return self._servers[0].sockets[0].getsockname()[1]

    async def drain(self, refuse_new: bool, timeout: float) -> bool:
        """Let the messages under way finish (up to `timeout` seconds), closing every other
        session with 421; True if every session ended in time. `refuse_new`: keep accepting,
        to answer new clients 421 (stop); else stop accepting (reload: others take them)."""
        if not refuse_new:
            for server in self._servers:
                server.close()  # this worker's descriptor only: the socket stays listening
        self.sessions.drain(refuse_new)
        return await self.sessions.wait_empty(timeout)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
