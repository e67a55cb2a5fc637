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
"""
from __future__ import annotations

import json
import threading

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error

RETRY_AFTER_S = 5


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
            self.error = Busy("the server is holding as many uploads as its memory allows; try again shortly")
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
