"""The gateway's hop against real sockets: raw HTTP/1.1 servers on loopback, written by hand so
each test decides keep-alive, `Connection: close`, delays and drops, and one uvicorn+Starlette
app like the replicas. Each test runs its own event loop with asyncio.run."""

import asyncio
import itertools
import json
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.serving import server as data_plane_server
from app.serving.hop import Hop, ReplicaGone


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Peer:
    """One server-side connection: `serial` 1 is the first one the server accepted."""

    serial: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: int = 0


Handler = Callable[[Peer, Received], Awaitable[bool]]  # False: close the connection


def answer(body: bytes, status: int = 200, *, close: bool = False, version: str = "1.1") -> bytes:
    head = f"HTTP/{version} {status} {HTTPStatus(status).phrase}\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def read_request(reader: asyncio.StreamReader) -> Received | None:
    """The next request on a connection, or None if the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    first, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = first.split(" ", 2)
    pairs = (line.split(":", 1) for line in lines if line)
    headers = {name.strip().lower(): value.strip() for name, value in pairs}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Received(method, path, headers, body)


async def echo(peer: Peer, request: Received) -> bool:
    peer.writer.write(answer(f"{request.method} {request.path} ".encode() + request.body))
    return True


class Replica:
    """A raw HTTP/1.1 server on an ephemeral loopback port that counts what it sees: accepted
    connections, requests (with the connection they came on) and clients hanging up."""

    def __init__(self, handler: Handler = echo, idle_timeout: float | None = None) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.accepted = 0
        self.received: list[tuple[int, Received]] = []
        self.hangups: list[int] = []
        self.hung_up = asyncio.Event()
        self.in_flight = 0
        self.peak = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def __aenter__(self) -> "Replica":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def hangup(self, peer: Peer) -> None:
        self.hangups.append(peer.serial)
        self.hung_up.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted += 1
        peer = Peer(self.accepted, reader, writer)
        try:
            while True:
                try:
                    request = await asyncio.wait_for(read_request(reader), self.idle_timeout)
                except TimeoutError:
                    return  # idle too long: close it, as uvicorn does after its keep-alive
                if request is None:
                    self.hangup(peer)
                    return
                peer.requests += 1
                self.received.append((peer.serial, request))
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                try:
                    keep = await self.handler(peer, request)
                finally:
                    self.in_flight -= 1
                if not keep:
                    return
                await writer.drain()
        except asyncio.CancelledError:
            return  # the test is over; ending quietly spares 3.11's streams a spurious error log
        finally:
            writer.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 5))  # a hang fails the test instead of the run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def eventually(event: asyncio.Event, within: float = 1.0) -> bool:
    try:
        await asyncio.wait_for(event.wait(), within)
    except TimeoutError:
        return False
    return True


# 1. round trip


def test_post_and_get_round_trip_status_and_exact_body_bytes() -> None:
    """What the gateway forwards is the caller's body byte for byte, counted in bytes."""
    rows = {"rows": [{"age": 41, "city": "Zürich", "plan": "pro"}]}
    body = json.dumps(rows, ensure_ascii=False).encode()  # more bytes than characters

    async def handler(peer: Peer, request: Received) -> bool:
        status = 201 if request.method == "POST" else 404
        peer.writer.write(answer(b"answer to " + request.body, status))
        return True

    async def test() -> None:
        hop = Hop()
        async with Replica(handler) as replica:
            assert await hop.request(replica.port, "POST", "/v1/predict", body) == (
                201,
                b"answer to " + body,
            )
            assert await hop.request(replica.port, "GET", "/health") == (404, b"answer to ")
            hop.close()
        (_, post), (_, get) = replica.received
        assert (post.method, post.path, post.body) == ("POST", "/v1/predict", body)
        assert post.headers["content-length"] == str(len(body)) != str(len(body.decode()))
        assert post.headers["content-type"] == "application/json"
        assert post.headers["host"] == f"127.0.0.1:{replica.port}"
        assert (get.method, get.path, get.body, get.headers["content-length"]) == (
            "GET",
            "/health",
            b"",
            "0",
        )

    run(test)


# 2. keep-alive


def test_sequential_requests_share_one_connection() -> None:
    """Keep-alive is the point of the hop: no connect per request."""

    async def test() -> None:
        hop = Hop()
        async with Replica() as replica:
            for i in range(5):
                status, got = await hop.request(replica.port, "POST", f"/r{i}", b"%d" % i)
                assert (status, got) == (200, f"POST /r{i} {i}".encode())
            assert replica.accepted == 1
            assert [serial for serial, _ in replica.received] == [1] * 5
            hop.close()

    run(test)


# 3. the replica closing idle connections


def test_connection_closed_while_idle_is_replaced_without_replica_gone() -> None:
    """uvicorn closes keep-alive connections idle past its timeout; that is no failure."""

    async def test() -> None:
        hop = Hop()
        async with Replica(idle_timeout=0.05) as replica:
            assert await hop.request(replica.port, "GET", "/a") == (200, b"GET /a ")
            await asyncio.sleep(0.2)  # the server has closed the idle connection
            assert await hop.request(replica.port, "GET", "/b") == (200, b"GET /b ")
            assert replica.accepted == 2
            assert [serial for serial, _ in replica.received] == [1, 2]
            hop.close()

    run(test)


def test_close_crossing_a_request_on_a_reused_connection_is_retried_on_a_new_one() -> None:
    """The replica's idle close can cross our next request on the wire: the request then dies
    on the reused connection, and is sent again once on a fresh one."""

    async def handler(peer: Peer, request: Received) -> bool:
        if peer.serial == 1 and peer.requests == 2:
            return False  # closed as the request arrived, without answering
        peer.writer.write(answer(request.path.encode()))
        return True

    async def test() -> None:
        hop = Hop()
        async with Replica(handler) as replica:
            assert await hop.request(replica.port, "POST", "/first", b"1") == (200, b"/first")
            assert await hop.request(replica.port, "POST", "/second", b"2") == (200, b"/second")
            assert replica.accepted == 2
            assert [(serial, r.path) for serial, r in replica.received] == [
                (1, "/first"),
                (1, "/second"),
                (2, "/second"),
            ]
            assert await hop.request(replica.port, "POST", "/third", b"3") == (200, b"/third")
            assert replica.accepted == 2  # the new connection is kept in turn
            hop.close()

    run(test)


# 4. Connection: close


@pytest.mark.parametrize(
    "closing",
    [answer(b"bye", close=True), answer(b"bye", version="1.0")],
    ids=["connection-close", "http-1.0"],
)
def test_answer_without_keep_alive_is_not_reused(closing: bytes) -> None:
    """The server keeps the socket open after saying it will not: only the header says so."""

    async def handler(peer: Peer, request: Received) -> bool:
        peer.writer.write(closing if peer.serial == 1 else answer(b"hello"))
        return True

    async def test() -> None:
        hop = Hop()
        async with Replica(handler) as replica:
            assert await hop.request(replica.port, "GET", "/a") == (200, b"bye")
            assert await eventually(replica.hung_up)  # RFC 9112 9.6: the client closes it
            assert await hop.request(replica.port, "GET", "/b") == (200, b"hello")
            assert replica.accepted == 2
            assert [serial for serial, _ in replica.received] == [1, 2]
            hop.close()

    run(test)


def test_connection_close_answer_then_close_is_followed_by_a_new_connection() -> None:
    async def handler(peer: Peer, request: Received) -> bool:
        peer.writer.write(answer(request.path.encode(), close=True))
        return False

    async def test() -> None:
        hop = Hop()
        async with Replica(handler) as replica:
            for path in ("/a", "/b", "/c"):
                assert await hop.request(replica.port, "GET", path) == (200, path.encode())
            assert replica.accepted == 3
            assert not hop.idle.get(replica.port)
            hop.close()

    run(test)


# 5. the replica gone


def test_refused_connection_is_replica_gone() -> None:
    async def test() -> None:
        hop = Hop()
        port = free_port()
        with pytest.raises(ReplicaGone, match=f"port {port}"):
            await hop.request(port, "GET", "/health")
        assert port not in hop.idle

    run(test)


def test_drop_on_a_fresh_connection_is_replica_gone_and_not_retried() -> None:
    async def drop(peer: Peer, request: Received) -> bool:
        return False

    async def test() -> None:
        hop = Hop()
        async with Replica(drop) as replica:
            with pytest.raises(ReplicaGone):
                await hop.request(replica.port, "POST", "/v1/predict", b"{}")
            await asyncio.sleep(0.05)  # room for a retry, if there were one
            assert replica.accepted == 1
            assert len(replica.received) == 1

    run(test)


def test_drop_on_a_reused_connection_is_retried_once_only() -> None:
    """A replica that answered and then dies mid-request: one retry, then ReplicaGone."""

    async def handler(peer: Peer, request: Received) -> bool:
        if request.path == "/ok":
            peer.writer.write(answer(b"ok"))
            return True
        return False

    async def test() -> None:
        hop = Hop()
        async with Replica(handler) as replica:
            assert await hop.request(replica.port, "GET", "/ok") == (200, b"ok")
            with pytest.raises(ReplicaGone):
                await hop.request(replica.port, "POST", "/crash", b"{}")
            await asyncio.sleep(0.05)
            assert replica.accepted == 2
            assert [(serial, r.path) for serial, r in replica.received] == [
                (1, "/ok"),
                (1, "/crash"),
                (2, "/crash"),
            ]
            assert not hop.idle.get(replica.port)

    run(test)


def test_unparseable_answer_is_replica_gone() -> None:
    async def garbage(peer: Peer, request: Received) -> bool:
        peer.writer.write(b"SPAM/9 nope\r\n\r\n")
        return True

    async def test() -> None:
        hop = Hop()
        async with Replica(garbage) as replica:
            with pytest.raises(ReplicaGone, match="unreadable"):
                await hop.request(replica.port, "GET", "/")
            assert await eventually(replica.hung_up)  # and the connection was closed

    run(test)


# 6. timeout


def test_no_answer_times_out_and_the_connection_is_spent() -> None:
    async def handler(peer: Peer, request: Received) -> bool:
        if peer.serial == 1:
            await peer.reader.read()  # never answers; returns when the client hangs up
            replica.hangup(peer)
            return False
        peer.writer.write(answer(b"late but fine"))
        return True

    replica = Replica(handler)

    async def test() -> None:
        hop = Hop(timeout=0.2)
        async with replica:
            started = time.monotonic()
            with pytest.raises(TimeoutError) as raised:
                await hop.request(replica.port, "POST", "/v1/predict", b"{}")
            assert 0.18 <= time.monotonic() - started < 1.0
            assert not isinstance(raised.value, ReplicaGone)
            assert await eventually(replica.hung_up)  # the client closed the connection
            assert replica.hangups == [1]
            assert await hop.request(replica.port, "GET", "/next") == (200, b"late but fine")
            assert replica.accepted == 2
            hop.close()

    run(test)


def test_cancelled_request_spends_its_connection() -> None:
    """A caller cancelled mid-request (a client gone) must not leave a late answer behind to
    be read as the answer to the next request on that connection."""
    release = asyncio.Event()

    async def handler(peer: Peer, request: Received) -> bool:
        if request.path == "/slow":
            await release.wait()
        peer.writer.write(answer(request.path.encode()))
        return True

    async def test() -> None:
        hop = Hop()
        async with Replica(handler) as replica:
            slow = asyncio.create_task(hop.request(replica.port, "GET", "/slow"))
            while not replica.received:
                await asyncio.sleep(0.01)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            release.set()
            assert await eventually(replica.hung_up)  # closed, not left open or kept idle
            assert await hop.request(replica.port, "GET", "/fast") == (200, b"/fast")
            assert replica.accepted == 2
            hop.close()

    run(test)


# 7. the limit


def test_limit_bounds_requests_in_flight_across_concurrent_callers() -> None:
    async def slow(peer: Peer, request: Received) -> bool:
        await asyncio.sleep(0.05)
        peer.writer.write(answer(request.path.encode()))
        return True

    async def test() -> None:
        hop = Hop(limit=2)
        async with Replica(slow) as replica:
            paths = [f"/r{i}" for i in range(6)]
            answers = await asyncio.gather(*(hop.request(replica.port, "GET", p) for p in paths))
            assert answers == [(200, p.encode()) for p in paths]
            assert replica.peak == 2  # never more, and the two slots are used
            assert replica.accepted == 2  # the two connections carry all six
            hop.close()

    run(test)


# 8. framing and routing by port


def test_answer_split_across_many_writes_is_reassembled() -> None:
    body = json.dumps({"predictions": [[i, i / 7] for i in range(20_000)]}).encode()

    async def trickle(peer: Peer, request: Received) -> bool:
        whole = answer(body)
        cuts = [0, 7, 30, 40, 1000, len(whole) // 2, len(whole) - 3, len(whole)]  # head split too
        for start, end in itertools.pairwise(cuts):
            peer.writer.write(whole[start:end])
            await peer.writer.drain()
            await asyncio.sleep(0.01)
        return True

    async def test() -> None:
        hop = Hop()
        async with Replica(trickle) as replica:
            assert await hop.request(replica.port, "GET", "/big") == (200, body)
            assert await hop.request(replica.port, "GET", "/big") == (200, body)  # parser reset
            assert replica.accepted == 1
            hop.close()

    run(test)


def test_concurrent_requests_to_two_ports_get_their_own_answers() -> None:
    def tagged(tag: bytes, delay: float) -> Handler:
        async def handler(peer: Peer, request: Received) -> bool:
            await asyncio.sleep(delay)
            peer.writer.write(answer(tag + b" " + request.body))
            return True

        return handler

    async def test() -> None:
        hop = Hop()
        async with Replica(tagged(b"A", 0.04)) as a, Replica(tagged(b"B", 0.01)) as b:
            calls = [(port, b"%d" % i) for i in range(8) for port in (a.port, b.port)]
            answers = await asyncio.gather(
                *(hop.request(port, "POST", "/v1/predict", body) for port, body in calls)
            )
            for (port, body), (status, got) in zip(calls, answers, strict=True):
                assert status == 200
                assert got == (b"A " if port == a.port else b"B ") + body
            assert len(a.received) == len(b.received) == 8
            hop.close()

    run(test)


# 9. forget and close


def test_forget_closes_idle_connections_to_that_port_only() -> None:
    async def test() -> None:
        hop = Hop()
        async with Replica() as a, Replica() as b:
            await asyncio.gather(hop.request(a.port, "GET", "/"), hop.request(a.port, "GET", "/"))
            await hop.request(b.port, "GET", "/")
            assert a.accepted == 2
            hop.forget(a.port)
            assert a.port not in hop.idle
            assert await eventually(a.hung_up)
            await asyncio.sleep(0.05)
            assert sorted(a.hangups) == [1, 2]
            assert b.hangups == []
            assert await hop.request(a.port, "GET", "/again") == (200, b"GET /again ")
            assert a.accepted == 3
            hop.close()
            assert hop.idle == {}
            assert await eventually(b.hung_up)
            assert b.hangups == [1]

    run(test)


# a real replica: uvicorn + Starlette


def replica_app() -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        assert request.client is not None
        return JSONResponse({"got": await request.json(), "client_port": request.client.port})

    async def health(request: Request) -> JSONResponse:
        assert request.client is not None
        return JSONResponse({"client_port": request.client.port})

    return Starlette(
        routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/health", health)]
    )


def test_against_uvicorn_starlette_replica() -> None:
    """The replicas' own server: answers parsed, connection kept (same client port), and a new
    one taken transparently once uvicorn's keep-alive timeout closed the idle one."""

    async def test() -> None:
        config = uvicorn.Config(
            replica_app(),
            host="127.0.0.1",
            port=0,
            lifespan="off",
            timeout_keep_alive=1,
            **data_plane_server.options("warning"),  # as the replicas run
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        hop = Hop()
        try:
            rows = {"rows": [{"age": 41, "city": "Zürich"}]}
            status, got = await hop.request(port, "POST", "/v1/predict", json.dumps(rows).encode())
            assert status == 200
            first = json.loads(got)
            assert first["got"] == rows
            status, got = await hop.request(port, "GET", "/health")
            assert status == 200
            assert json.loads(got)["client_port"] == first["client_port"]
            assert (await hop.request(port, "GET", "/nowhere"))[0] == 404
            await asyncio.sleep(1.3)  # past uvicorn's keep-alive timeout
            status, got = await hop.request(port, "GET", "/health")
            assert status == 200
            assert json.loads(got)["client_port"] != first["client_port"]
        finally:
            hop.close()
            server.should_exit = True
            await serving

    run(test)
