"""uvicorn for the data plane (the gateway and its replicas), with each response leaving in
one send: uvicorn writes a response's status line and headers, then its body, as two
writes, and uvloop turns each into a syscall and a TCP segment — so every prediction cost
two sends here, two wake-ups and reads in the gateway's hop or the client, twice over."""

import asyncio
import gc
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Above this many pending bytes a write goes out at once, so a large or streamed body still
# meets the transport's flow control (which pauses the writer) as it would without us.
FLUSH_AT_BYTES = 64 * 1024


class CoalescingTransport:
    """Writes made in one turn of the event loop leave in one `write` at its end."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # everything else (flow control, extra info, is_closing) is the transport's own
        return getattr(self._transport, name)


class CoalescingHttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(coalescing)  # type: ignore[arg-type]


def options(log_level: str) -> dict[str, Any]:
    """uvicorn's settings for a data-plane server (`uvicorn.run` or `uvicorn.Config`)."""
    # no access log: a line per prediction costs more than the routing; metrics count
    return {"log_level": log_level, "access_log": False, "http": CoalescingHttpProtocol}


def freeze_heap() -> None:
    """Leave what is alive now (imports, the app, a replica's model) to reference counting
    alone: the collector's full passes walked all of it, stalling the gateway's event loop for
    80-95 ms every ten seconds or so under load (most of its p99 at concurrency 32); now they
    walk what was made since (2-4 ms). Frozen objects are still freed when no longer used."""
    gc.collect()
    gc.freeze()


def run(app: Any, host: str, port: int, log_level: str) -> None:
    """A data-plane process's server, once everything it needs is loaded."""
    freeze_heap()
    uvicorn.run(app, host=host, port=port, **options(log_level))
