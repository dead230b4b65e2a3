"""The data plane's uvicorn (app/serving/server.py): a response leaves in one write, and what
holding writes back could break — keep-alive, `Connection: close`, bodies past the flush
threshold, streamed bodies, a client that left — still works, over real sockets with
http.client as the client. Each test runs its own event loop with asyncio.run."""

import asyncio
import http.client
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from app.serving import server
from app.serving.asgi import send_json
from app.serving.server import FLUSH_AT_BYTES, CoalescingHttpProtocol, CoalescingTransport

BIG = b"x" * (3 * FLUSH_AT_BYTES + 17)
CHUNKS = [b"first,", b"second,", b"third"]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(0.2)
    if path in ("/json", "/slow"):
        await send_json(send, 200, {"path": path}, {"X-Request-Id": "r-1"})
    elif path == "/big":
        length = [(b"content-length", str(len(BIG)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": BIG})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in CHUNKS:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})


class CountingTransport:
    """Between uvicorn's coalescing and the socket: what reaches the real transport."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def serving(test: Callable[[int, list[bytes]], Awaitable[None]]) -> None:
    writes: list[bytes] = []

    class Counting(CoalescingHttpProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(CountingTransport(transport, writes))

    async def main() -> None:
        options = server.options("warning") | {"http": Counting}
        config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", **options)
        uvicorn_server = uvicorn.Server(config)
        task = asyncio.create_task(uvicorn_server.serve())
        while not uvicorn_server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        try:
            await test(uvicorn_server.servers[0].sockets[0].getsockname()[1], writes)
        finally:
            uvicorn_server.should_exit = True
            await task

    asyncio.run(main())


def fetch(port: int, path: str, times: int = 1) -> list[tuple[int, bytes, str | None]]:
    """`times` requests on one keep-alive connection: status, body, transfer-encoding."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        answers = []
        for _ in range(times):
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            answers.append((response.status, body, response.getheader("transfer-encoding")))
        return answers
    finally:
        connection.close()


def test_the_data_plane_servers_use_the_coalescing_protocol() -> None:
    assert server.options("info")["http"] is CoalescingHttpProtocol
    assert server.options("info")["access_log"] is False


def test_each_response_is_one_write_and_keep_alive_holds() -> None:
    async def test(port: int, writes: list[bytes]) -> None:
        answers = await asyncio.to_thread(fetch, port, "/json", 3)
        assert answers == [(200, b'{"path":"/json"}', None)] * 3
        assert len(writes) == 3, "status line, headers and body leave together"
        assert all(w.startswith(b"HTTP/1.1 200") for w in writes)
        assert all(w.endswith(b'{"path":"/json"}') for w in writes)
        assert all(b"x-request-id: r-1\r\n" in w for w in writes)

    serving(test)


def test_connection_close_sends_the_whole_answer_before_closing() -> None:
    async def test(port: int, writes: list[bytes]) -> None:
        def client() -> tuple[int, bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                received = b""
                while chunk := sock.recv(65536):  # to EOF: the server closed after the answer
                    received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            return int(head.split()[1]), head, body

        status, head, body = await asyncio.to_thread(client)
        assert (status, body) == (200, b'{"path":"/json"}')
        assert b"connection: close" in head.lower()

    serving(test)


def test_a_body_past_the_threshold_goes_out_at_once_and_whole() -> None:
    async def test(port: int, writes: list[bytes]) -> None:
        assert await asyncio.to_thread(fetch, port, "/big") == [(200, BIG, None)]
        assert len(writes) == 1 and writes[0].endswith(BIG)

    serving(test)


def test_a_streamed_body_arrives_in_order() -> None:
    async def test(port: int, writes: list[bytes]) -> None:
        streamed = await asyncio.to_thread(fetch, port, "/stream")
        assert streamed == [(200, b"".join(CHUNKS), "chunked")]
        assert len(writes) == len(CHUNKS) + 1, "each chunk leaves when the app waits"

    serving(test)


def test_a_client_gone_before_its_answer_harms_nobody_else() -> None:
    async def test(port: int, writes: list[bytes]) -> None:
        def leave_early() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")

        await asyncio.to_thread(leave_early)
        await asyncio.sleep(0.3)  # its answer was due while the socket was gone
        assert await asyncio.to_thread(fetch, port, "/json") == [(200, b'{"path":"/json"}', None)]

    serving(test)


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    recording = RecordingTransport()
    return CoalescingTransport(recording, asyncio.get_running_loop()), recording  # type: ignore[arg-type]


def test_writes_in_one_turn_leave_together_at_its_end() -> None:
    async def test() -> None:
        transport, recording = coalescing()
        transport.write(b"head ")
        transport.write(b"body")
        assert recording.writes == []
        await asyncio.sleep(0)
        assert recording.writes == [b"head body"]
        transport.write(b"next")
        await asyncio.sleep(0)
        assert recording.writes == [b"head body", b"next"]
        assert transport.get_extra_info("peername") == "info:peername"

    asyncio.run(test())


def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    async def test() -> None:
        transport, recording = coalescing()
        transport.write(b"answer")
        transport.close()
        assert recording.writes == [b"answer"] and recording.closed

        transport, recording = coalescing()
        transport.write(b"answer")
        transport.abort()
        await asyncio.sleep(0)
        assert recording.writes == [] and recording.aborted

    asyncio.run(test())


def test_nothing_is_written_to_a_transport_already_closing() -> None:
    async def test() -> None:
        transport, recording = coalescing()
        transport.write(b"late")
        recording.closed = True  # the peer left before the turn ended
        await asyncio.sleep(0)
        assert recording.writes == []

    asyncio.run(test())


FREEZE = """
import gc
from app.serving.server import freeze_heap
loaded = [[i] for i in range(50_000)]  # what a process holds once started
cycle = [[]]; cycle[0].append(cycle); del cycle  # garbage left from starting
freeze_heap()
assert gc.get_freeze_count() >= 50_000, gc.get_freeze_count()
assert gc.collect() == 0, "garbage was collected before freezing, not frozen with the rest"
print("ok")
"""


def test_a_data_plane_process_freezes_what_it_loaded_before_serving() -> None:
    """In its own interpreter: freezing the test process's heap would change every later test."""
    done = subprocess.run([sys.executable, "-c", FREEZE], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
