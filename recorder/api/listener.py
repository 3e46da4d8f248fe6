"""`make_runner`: the read API's listener, web.AppRunner except for junk from clients.

Junk is whatever aiohttp's HTTP parser refuses before any middleware runs: a request line or
header over 8 KiB, a raw non-ASCII byte in the target, a bad method or version, bytes that are
not HTTP at all. aiohttp answers it from `RequestHandler.handle_error` with a text/plain body
that echoes part of what the client sent (an oversized credential included), and logs each at
ERROR with a traceback, so an unauthenticated client could flood the log. Here junk gets a 400
problem+json that echoes nothing, and is logged at INFO without a traceback, at most one line
per `junk_log_interval_s` with a count of the lines it held back.

aiohttp has no public hook for those responses. The smallest supported-looking change is a
RequestHandler subclass overriding `handle_error`, built by a web.Server subclass (the Server
is the protocol factory), which the runner returns in place of aiohttp's own from
`_make_server`. tests/api/test_junk_requests.py fails if a new aiohttp changes that contract.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from recorder.api.problems import problem_response
from recorder.errors import ConfigError
from recorder.logs import event

log = logging.getLogger("recorder.api")

JUNK_LOG_INTERVAL_S = 60.0


class RateLimitedLog:
    """At most one line per `interval_s`; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float, event_name: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._event = event_name
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def info(self, message: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d similar lines suppressed in the last %d s)"
            args = (*args, self._suppressed, self._interval_s)
        self._logger.info(message, *args, extra=event(self._event))
        self._last, self._suppressed = now, 0


def _junk_detail(exc: HttpProcessingError) -> str:
    # Never exc.message: aiohttp quotes the offending bytes in it.
    if isinstance(exc, LineTooLong):
        return "the request line or a header field is too long (8 KiB at most)"
    return "the request is not well-formed HTTP/1.1"


class _ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its last-resort error responses as problem+json."""

    def __init__(self, manager: web.Server, *, junk_log: RateLimitedLog, **kwargs: Any) -> None:
        self._junk_log = junk_log  # before super().__init__, which starts serving
        super().__init__(manager, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):  # the client's bytes: not our fault
            self._junk_log.info("read API: refused a malformed request from %s (%s)",
                                request.remote, type(exc).__name__)
            detail = _junk_detail(exc)
        else:  # an error of ours that escaped the application: aiohttp's line and traceback
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            detail = HTTPStatus(status).phrase.lower()
        if request.writer.output_size > 0:  # as aiohttp: too late for another response
            raise ConnectionError("the response has started; cannot send an error response")
        response = problem_response(status, detail)
        response.force_close()
        return response


class _ProblemServer(web.Server):
    """The aiohttp Server the application built, making `_ProblemRequestHandler`s."""

    def __init__(self, built: web.Server, junk_log: RateLimitedLog) -> None:
        # Server keeps the loop and the protocol's keyword arguments in private attributes.
        self._protocol_kwargs: dict[str, Any] = dict(built._kwargs)
        super().__init__(built.request_handler, request_factory=built.request_factory,
                         handler_cancellation=built.handler_cancellation, loop=built._loop,
                         **self._protocol_kwargs)
        self._junk_log = junk_log

    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, junk_log=self._junk_log,
                                      **self._protocol_kwargs)


class _ApiRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, junk_log: RateLimitedLog, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._junk_log = junk_log

    async def _make_server(self) -> web.Server:
        return _ProblemServer(await super()._make_server(), self._junk_log)


def make_runner(
    app: web.Application, *, junk_log_interval_s: float = JUNK_LOG_INTERVAL_S, **kwargs: Any
) -> web.AppRunner:
    """The runner for `app` (start it with web.TCPSite as usual). `kwargs` go to AppRunner;
    the access log is off unless given, as recorder.app always ran it."""
    kwargs.setdefault("access_log", None)
    junk_log = RateLimitedLog(log, junk_log_interval_s, "api.request.junk")
    return _ApiRunner(app, junk_log=junk_log, **kwargs)


async def listen(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> web.AppRunner:
    """Serve `app` on host:port now, or raise a ConfigError naming RECORDER_API_LISTEN.

    Bound before anything else starts, so that an address nobody can listen on stops the
    process at once with exit 2, which systemd does not retry. `reuse_port`: several worker
    processes listen on the one port (SO_REUSEPORT) and the kernel spreads connections.
    """
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            "RECORDER_API_LISTEN", f"cannot listen on {host}:{port}: {_why(exc, port)}"
        ) from exc
    return runner


def probe_listen(host: str, port: int, *, reuse_port: bool = False) -> None:
    """Bind (without listening) every address of host:port, or raise the ConfigError `listen`
    would: the supervisor checks the address before it starts the serve workers."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, protocol, _, address in infos:
            with socket.socket(family, kind, protocol) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(address)
    except OSError as exc:
        raise ConfigError(
            "RECORDER_API_LISTEN", f"cannot listen on {host}:{port}: {_why(exc, port)}"
        ) from exc


def _why(exc: OSError, port: int) -> str:
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if exc.errno == errno.EADDRINUSE:
        return (f"the port is in use (another recorder?); pick a free one, e.g. "
                f"RECORDER_API_LISTEN=127.0.0.1:{port + 1 if port < 65535 else 8780}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this host's"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)
