"""A gunicorn worker that drains keep-alive connections before it stops.

nginx keeps idle keep-alive connections to every worker. A stock uvicorn
worker closes its idle connections the moment it is told to stop (SIGTERM on
`make down`, on a gunicorn HUP reload, on scale-down); a request nginx wrote
into one of them at that instant is reset, and nginx never retries a POST, so
the client gets a 502. This worker first *drains* for ``MG_DRAIN_SECONDS``:
it keeps serving, but every response says ``Connection: close``, so nginx
stops reusing its connections, and connections nobody uses are closed by
nginx's own upstream ``keepalive_timeout`` (shorter than the drain). It
takes no new connection meanwhile (the other workers, or the new ones of a
reload, do). Only then does the usual graceful shutdown run, when no
connection is idle in nginx's pool any more.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from types import FrameType

from gunicorn.arbiter import Arbiter
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from ._logging import write_logs_at_once


class DrainState:
    """Read by the request middleware on every response; written once per worker."""

    active = False


drain_state = DrainState()


class DrainingServer(Server):
    drain_seconds = float(os.environ.get("MG_DRAIN_SECONDS", "2.0"))
    _drain_deadline: float | None = None
    _listening_closed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if drain_state.active or self.drain_seconds <= 0:
            super().handle_exit(sig, frame)  # a second signal stops at once, as usual
            return
        # Runs in a signal handler: only set state; on_tick acts on it.
        self._captured_signals.append(sig)
        drain_state.active = True
        self._drain_deadline = time.monotonic() + self.drain_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # uvicorn ends the worker by raising the stop signal again under its default
        # action: the process dies there, without atexit functions (logging.shutdown).
        write_logs_at_once()

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None:
            if not self._listening_closed:
                # Take no new connection: one accepted now could be closed unread.
                for server in self.servers:
                    server.close()
                self._listening_closed = True
            if time.monotonic() >= self._drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)


class UnixSocketProxyHeaders:
    """The client address from X-Forwarded-For, for connections through a Unix socket only.

    uvicorn believes forwarded headers by the peer's IP address (MG_FORWARDED_ALLOW_IPS),
    and a Unix socket peer has none. The native stack puts each service's socket in a
    folder only the stack's user may enter, so what arrives there comes from nginx, which
    sets X-Forwarded-For to the client's address. Connections over TCP pass unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client") is None and _via_unix_socket(scope):
            headers = dict(scope["headers"])
            forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            client = forwarded.rsplit(",", 1)[-1].strip()
            try:
                ipaddress.ip_address(client)
            except ValueError:
                client = ""
            scope = dict(scope)
            if client:
                scope["client"] = (client, 0)
            if headers.get(b"x-forwarded-proto") in (b"http", b"https"):
                scope["scheme"] = headers[b"x-forwarded-proto"].decode("ascii")
        await self.app(scope, receive, send)


def _via_unix_socket(scope: Scope) -> bool:
    # uvicorn gives a Unix socket's server address as (path, None).
    server = scope.get("server")
    return server is not None and server[1] is None


class DrainingUvicornWorker(UvicornWorker):
    async def _serve(self) -> None:
        self.config.app = self.wsgi
        self.config.load()
        self.config.loaded_app = UnixSocketProxyHeaders(self.config.loaded_app)
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
