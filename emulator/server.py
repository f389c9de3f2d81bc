"""Running the emulator: the ASGI app, and uvicorn in a thread, in this loop or as the process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import FrameType, TracebackType
from typing import Final, Self, override

import uvicorn
from starlette.applications import Starlette

from emulator import admin, twilio_api
from emulator.controls import CallbackOptions
from emulator.lifecycle import Lifecycles
from emulator.store import Clock, Emulator, utc_now

START_TIMEOUT_S: Final = 10.0


class EmulatorApp(Starlette):
    """The ASGI app; `app.emulator` is its state and Python API."""

    def __init__(self, emulator: Emulator) -> None:
        lifecycles = Lifecycles(emulator)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with lifecycles:
                yield

        super().__init__(
            routes=[*twilio_api.routes(emulator, lifecycles), *admin.routes(emulator)],
            exception_handlers={404: twilio_api.not_found},
            lifespan=lifespan,
        )
        self.emulator = emulator


def create_app(
    accounts: Mapping[str, str],
    *,
    clock: Clock = utc_now,
    callbacks: CallbackOptions | None = None,
    open_accounts: bool = False,
) -> EmulatorApp:
    """An emulator for `accounts` (AccountSid → AuthToken); see `Emulator` for `open_accounts`."""
    emulator = Emulator(accounts, clock=clock, callbacks=callbacks, open_accounts=open_accounts)
    return EmulatorApp(emulator)


class _Server(uvicorn.Server):
    """uvicorn that leaves signal handling to its host (a test run, `zapflow up`)."""

    @override
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port))


def _server(app: EmulatorApp) -> _Server:
    config = uvicorn.Config(
        app,
        log_config=None,  # the host configures logging; uvicorn only propagates to it
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    return _Server(config)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


class EmulatorServer:
    """The emulator on a thread of its own: `with EmulatorServer(app) as server: server.url`."""

    def __init__(self, app: EmulatorApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._host, self._port = host, port
        self._server = _server(app)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def emulator(self) -> Emulator:
        return self.app.emulator

    def start(self) -> Self:
        self._socket = _listen(self._host, self._port)
        self.url = _url(self._socket)
        sockets = [self._socket]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="twilio-emulator"
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Twilio emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def serve(app: EmulatorApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """The emulator on the running event loop while the block runs; yields its base URL.

    Only for clients that do not block the loop (httpx.AsyncClient, the SDK's async client):
    the SDK's default, blocking client needs `EmulatorServer`.
    """
    sock = _listen(host, port)
    server = _server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="twilio-emulator")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError("the Twilio emulator did not start")
            await asyncio.sleep(0.01)
        yield _url(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()


def run(
    app: EmulatorApp, host: str = "127.0.0.1", port: int = 0, ready: Callable[[str], None] = print
) -> None:
    """Serve `app` in this (main) thread until SIGINT or SIGTERM; `ready` gets the base URL.

    The socket listens before `ready` is called, so a client told the URL can connect at once.
    Either signal stops the server gracefully and this returns normally.
    """
    sock = _listen(host, port)
    server = _server(app)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ready(_url(sock))
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise RuntimeError("the Twilio emulator did not start")
