"""Running the app under uvicorn: in the foreground (`onebert serve`) or in a thread on a free port.

Connections are guarded (`guarded_protocol`) because uvicorn itself bounds neither how many there
are nor how long a client may take to send a request: a client that sends half its headers and
then nothing held its connection (and a file descriptor) forever, until accept() failed with EMFILE.
Here every request must arrive whole (headers and body) within `client_timeout_s` of the
connection or of the previous response, else the connection gets 408 and is closed; and beyond
`max_connections` open connections a new one is answered 503 and closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any, Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from onebert.errors import OneBertError

log = logging.getLogger(__name__)


def _raw_response(status: int, reason: str, detail: str, extra: str = "") -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body


def _no_delay(transport: asyncio.Transport) -> None:
    """TCP_NODELAY on a connection: h11 writes a response's headers and its body separately, and with Nagle's
    algorithm the body then waits for the client's delayed ACK of the headers (~40 ms on Linux) on every
    keep-alive request: measured 52 ms per /embed with one client, 10 ms on a fresh connection."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def guarded_protocol(max_connections: int, client_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and a deadline for receiving each request."""

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _deadline: asyncio.TimerHandle | None = None
        _partial = False  # bytes of a request arrived since the last response

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self._refused = True
                self.transport = transport
                transport.write(_raw_response(
                    503, "Service Unavailable", f"{max_connections} connections are open already "
                    f"(server option --max-connections); retry later", "retry-after: 1\r\n"))
                transport.close()
                return
            super().connection_made(transport)
            _no_delay(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            self._partial = True
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()  # the request is complete (or the connection is done): the app has it now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._partial = False
            if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._arm()  # the next request on this keep-alive connection gets its own deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(client_timeout_s, self._client_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _client_too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._partial:  # an idle connection is just closed, as after a keep-alive timeout
                self.transport.write(_raw_response(
                    408, "Request Timeout", f"the request did not arrive whole within {client_timeout_s:g} s "
                    f"(server option --client-timeout)"))
            self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app, log_level: str = "info", **kwargs: Any) -> uvicorn.Config:
    """uvicorn's settings for `app`, with the connection limits of its ServeSettings (`app.state.settings`)."""
    settings = getattr(app.state, "settings", None)
    max_connections = getattr(settings, "max_connections", 512)
    client_timeout_s = getattr(settings, "client_timeout_s", 10.0)
    return uvicorn.Config(app, log_level=log_level, lifespan="on", http=guarded_protocol(max_connections,
                                                                                         client_timeout_s),
                          timeout_keep_alive=min(5, client_timeout_s), **kwargs)


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket; a bad port or an address in use is one error line, not a traceback."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OneBertError(f"--port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OneBertError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve_forever(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM; on `sock` when given (bound early, before the model loads), else host:port."""
    sock = sock or listen(host, port)
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level, workers=1, timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise OneBertError("the server did not start (see the log above)")


@contextlib.contextmanager
def background_server(app, host: str = "127.0.0.1", log_level: str = "warning",
                      start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` on a free port of `host` in a daemon thread; yields the base URL, stops on exit."""
    sock = listen(host, 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
