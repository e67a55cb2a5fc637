"""Waitress for the doors (gateway, DICOM node), with request bodies held in memory only and
within one byte budget per process.

Waitress reads every request, body included, in its asynchronous loop before a thread sees it
(so slow clients cost a buffer, not a thread), and spools a body larger than
``inbuf_overflow`` to a temporary file. A body here may be a patient's image: it must never
reach a disk-backed path, so ``inbuf_overflow`` is the body limit and nothing spools. What
bounds the memory instead is the budget: a request's declared Content-Length (a chunked one:
the body limit) is taken from it when its headers arrive, before any of the body is read, and
given back when the request is done or its client goes away. A request the budget cannot hold
is answered 503 with Retry-After at once, so sixteen large concurrent uploads meet a clear
"busy" instead of an out-of-memory kill.

Waitress speaks no TLS. A door run alone with a certificate (``TLSServer``) is served by
Hypercorn instead, which also reads bodies in an asynchronous loop and holds them in memory, and
takes the same budget; on the cluster TLS ends at the Ingress and waitress serves.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error

RETRY_AFTER_S = 5
BUSY = "the server is holding as many uploads as its memory allows; try again shortly"


class MemoryBudget:
    """Bytes of request bodies held at once, at most ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Busy(Error):
    code, reason = 503, "Service Unavailable"

    def to_response(self, ident=None):
        body = json.dumps({"error": self.body}).encode()
        return (f"{self.code} {self.reason}", [("Content-Type", "application/json"),
                                               ("Retry-After", str(RETRY_AFTER_S))], body)


def _parser_for(budget: MemoryBudget):
    class BudgetedParser(HTTPRequestParser):
        held = 0

        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            limit = self.adj.max_request_body_size
            size = limit if self.chunked else self.content_length
            if size <= 0 or (not self.chunked and size >= limit):      # no body, or waitress refuses it (413)
                return
            if budget.take(size):
                self.held = size
                return
            self.error = Busy(BUSY)
            self.body_rcv, self.completed = None, True                 # the body is never read

        def close(self):
            held, self.held = self.held, 0
            if held:
                budget.give(held)
            super().close()

    return BudgetedParser


def _channel_for(parser_class):
    class BudgetedChannel(HTTPChannel):
        def handle_close(self):
            # a client gone mid-body: waitress drops the request it was receiving without
            # closing it; close it so its share of the budget comes back
            if self.request is not None:
                self.request.close()
            super().handle_close()

    BudgetedChannel.parser_class = parser_class
    return BudgetedChannel


def create_server(app, budget_bytes: int, max_body_bytes: int, **options):
    """A waitress server for ``app`` (``.run()``, ``.close()``, ``.effective_port``): bodies up to
    ``max_body_bytes`` each, in memory, ``budget_bytes`` of them at once; ``options`` go to
    waitress (host, port, threads, connection_limit, channel_timeout, ident, ...)."""
    from waitress import create_server as waitress_server

    budget = MemoryBudget(budget_bytes)
    server = waitress_server(app, max_request_body_size=max_body_bytes, inbuf_overflow=max_body_bytes + 1,
                             **options)
    server.channel_class = _channel_for(_parser_for(budget))
    server.budget = budget
    return server


class _Budgeted:
    """Hypercorn's app wrapper with the budget in front: the declared length (a chunked body: the
    limit) is taken before the wrapped WSGI adapter reads any of the body, and given back after."""

    def __init__(self, inner, budget: MemoryBudget, max_body_bytes: int):
        self.inner, self.budget, self.max_body = inner, budget, max_body_bytes

    async def __call__(self, scope, receive, send, sync_spawn, call_soon):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send, sync_spawn, call_soon)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        size = self.max_body if b"chunked" in headers.get(b"transfer-encoding", b"") else \
            int(length) if length.isdigit() else self.max_body
        if size > self.max_body:
            return await _refuse(send, 413, "the request is larger than the upload limit")
        if size and not self.budget.take(size):
            return await _refuse(send, 503, BUSY, [(b"retry-after", str(RETRY_AFTER_S).encode())])
        try:
            await self.inner(scope, receive, send, sync_spawn, call_soon)
        finally:
            if size:
                self.budget.give(size)


async def _refuse(send, status: int, message: str, headers=()):
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class TLSServer:
    """``app`` over TLS with Hypercorn (``.run()``, ``.close()``, ``.effective_port``, ``.budget``),
    as ``create_server`` gives it over plain HTTP with waitress. ``tls.ca`` set: clients must
    present a certificate from it."""

    def __init__(self, app, tls, budget_bytes: int, max_body_bytes: int, host: str, port: int, threads: int = 8,
                 channel_timeout: int = 30):
        from hypercorn.app_wrappers import WSGIWrapper
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"{host}:{port}"]
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
        if tls.ca:
            config.ca_certs, config.verify_mode = str(tls.ca), ssl.CERT_REQUIRED
        config.wsgi_max_body_size = max_body_bytes
        config.read_timeout = channel_timeout            # a connection silent this long is closed
        config.accesslog, config.errorlog = None, logging.getLogger("hypercorn.error")
        config.include_server_header = False
        self.config, self.threads = config, threads
        self.sockets = config.create_sockets()           # bound now, so port 0 has picked one
        for sock in self.sockets.secure_sockets:
            sock.listen(config.backlog)                   # connections wait in the backlog until run()
        self.effective_port = self.sockets.secure_sockets[0].getsockname()[1]
        self.budget = MemoryBudget(budget_bytes)
        self.app = _Budgeted(WSGIWrapper(app, max_body_bytes), self.budget, max_body_bytes)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()

    def run(self) -> None:
        from hypercorn.asyncio.run import worker_serve

        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.set_default_executor(ThreadPoolExecutor(self.threads, thread_name_prefix="https"))
        try:
            loop.run_until_complete(worker_serve(self.app, self.config, sockets=self.sockets,
                                                 shutdown_trigger=self._stop.wait))
        finally:
            loop.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
