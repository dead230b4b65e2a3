"""The gateway's hop to its replicas: keep-alive HTTP/1.1 over loopback, parsed by httptools.

The replicas are our own uvicorn processes on 127.0.0.1 answering with a Content-Length, so a
connection here is a transport, httptools' response parser and one future per request.
aiohttp's client, used before, spent about a quarter of the gateway's CPU per request on what
this hop never needs (a response object and its headers, cookies, redirects, tracing hooks).
"""

import asyncio
from collections import defaultdict
from typing import cast

import httptools


class ReplicaGone(ConnectionError):
    """The replica refused the connection or closed it before answering."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.reusable = True
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ReplicaGone(f"unreadable answer from the replica: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ReplicaGone("the replica closed the connection before answering"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        body, self.chunks = b"".join(self.chunks), []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> "asyncio.Future[tuple[int, bytes]]":
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


class Hop:
    """Connections to replicas by port, reused while the replica keeps them open. At most
    `limit` requests are in flight to all replicas together; the rest wait here."""

    def __init__(self, limit: int = 64, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.slots = asyncio.Semaphore(limit)
        self.idle: defaultdict[int, list[_Connection]] = defaultdict(list)

    async def request(
        self, port: int, method: str, path: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        """(status, body). ReplicaGone if no connection to it holds; TimeoutError if it does
        not answer in time. A reused connection that the replica had closed meanwhile is
        retried once on a new one: that is not the replica going away."""
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        async with self.slots:
            while True:
                reused, connection = self._take(port)
                if connection is None:
                    connection = await self._connect(port)
                try:
                    answer = await self._exchange(connection, head + body)
                except ReplicaGone:
                    if reused:
                        continue
                    raise
                if connection.reusable and not connection.closed:
                    self.idle[port].append(connection)
                elif connection.transport is not None:
                    connection.transport.close()  # "Connection: close": the client closes too
                return answer

    def _take(self, port: int) -> tuple[bool, _Connection | None]:
        idle = self.idle.get(port)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return True, connection
        self.idle.pop(port, None)  # a replica gone for good leaves no entry behind
        return False, None

    async def _connect(self, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, "127.0.0.1", port)
        except OSError as exc:
            raise ReplicaGone(f"no connection to the replica on port {port}: {exc}") from exc
        return connection

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, bytes]:
        waiter = connection.send(request)

        def expire() -> None:
            if not waiter.done():
                waiter.set_exception(TimeoutError(f"no answer in {self.timeout:g} s"))

        timer = asyncio.get_running_loop().call_later(self.timeout, expire)
        try:
            return await waiter
        except BaseException:  # timed out or cancelled half-way: the connection is spent
            connection._fail(ReplicaGone("abandoned"))
            raise
        finally:
            timer.cancel()

    def forget(self, port: int) -> None:
        """A replica stopped or dropped: close what is idle to it."""
        for connection in self.idle.pop(port, []):
            if connection.transport is not None:
                connection.transport.close()

    def close(self) -> None:
        for port in list(self.idle):
            self.forget(port)
