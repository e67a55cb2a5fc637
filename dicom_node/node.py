"""The node assembled: both doors, the inbox, and the workers that report on quiet studies."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from components.core.identity import ClientCredentials
from components.core.tls import TLSFiles
from dicom_node import dimse, stow
from dicom_node.doors import Doors
from dicom_node.inbox import Batch, Inbox
from dicom_node.report import Reporter, Retry, Store
from dicom_node.sites import SiteMap

log = logging.getLogger("dicom_node")


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str                              # the called AE title a C-STORE must name
    gateway: str                               # the gateway's base URL
    store: Store                               # where the reports go (dicom_node.pacs)
    doors: Doors                               # who may send (senders, STOW-RS tokens) and the audit
    credentials: ClientCredentials | None      # the node's own token for the gateway (None: --auth none)
    strategies: dict[str, str] = field(default_factory=lambda: {"mammography": "progressive",
                                                                "ultrasound": "progressive"})
    host: str = "127.0.0.1"
    dicom_port: int = 11112
    http_port: int = 8090
    quiet_s: float = 5.0                       # a study is complete once quiet this long
    max_associations: int = 4                  # DICOM associations at once
    http_connections: int = 8                  # HTTP connections at once (each may hold one body)
    max_pdu: int = 65536                       # bytes a P-DATA PDU may carry
    budget_bytes: int = 512 << 20              # instances held (waiting or being reported on)
    retry: Retry = Retry()
    workers: int = 2                           # studies reported on at once
    gateway_timeout_s: float = 60.0
    dicom_tls: TLSFiles | None = None          # the C-STORE door's certificate (and the senders' CA); None: plaintext
    http_tls: TLSFiles | None = None           # the STOW-RS door's certificate; None: plain HTTP
    gateway_tls: TLSFiles | None = None        # an https gateway's CA (and the node's certificate for mutual TLS)
    sites: SiteMap = SiteMap()                 # sender or institution -> the site whose operating point is asked


class Node:
    """``start()`` opens both doors; ``stop()`` closes them, reports on what is held, and waits.
    ``report`` (a batch -> anything) replaces asking the gateway, for tests of the node alone."""

    def __init__(self, config: NodeConfig, report: Callable[[Batch], object] | None = None):
        self.config = config
        self.inbox = Inbox(config.budget_bytes, config.quiet_s, config.doors.phi_key)
        self.report = report or Reporter(config.gateway, config.strategies, config.store, config.retry,
                                         config.gateway_timeout_s, config.credentials, config.gateway_tls, config.sites)
        self._workers = ThreadPoolExecutor(config.workers, thread_name_prefix="dicom-node-report")
        self._stopping = threading.Event()
        self._scp = self._http = None
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="dicom-node-quiet")

    def start(self) -> Node:
        from components.core import http

        c = self.config
        tls = c.dicom_tls.server_context() if c.dicom_tls else None
        self._scp = dimse.start(dimse.storage_ae(c.ae_title, c.max_associations, c.max_pdu, c.doors.senders), c.host,
                                c.dicom_port, self.inbox, c.doors, tls)
        # STOW-RS bodies are held in memory (never spooled to a temporary file), within the budget
        app = stow.make_app(self.inbox, c.doors)
        if c.http_tls:
            self._http = http.TLSServer(app, c.http_tls, c.budget_bytes, c.budget_bytes, c.host, c.http_port, threads=2)
        else:
            self._http = http.create_server(app, c.budget_bytes, c.budget_bytes, host=c.host, port=c.http_port,
                                            threads=2, connection_limit=c.http_connections, channel_timeout=30,
                                            asyncore_use_poll=True, ident="dicom-node")
        threading.Thread(target=self._http.run, daemon=True, name="dicom-node-http").start()
        self._watcher.start()
        log.info("DICOM node %s: C-STORE on %s:%d (%s), STOW-RS on %s://%s:%d/studies, reports via %s to %s",
                 c.ae_title, c.host, self.dicom_port, _describe(c.dicom_tls), "https" if c.http_tls else "http",
                 c.host, self.http_port, c.gateway, c.store)
        if c.dicom_tls is None:
            log.warning("the C-STORE door is PLAINTEXT: images arrive unencrypted; give --dicom-tls-cert and "
                        "--dicom-tls-key (and --dicom-tls-ca to require the senders' certificates) for DICOM TLS")
        if c.http_tls is None:
            log.warning("the STOW-RS door is PLAIN HTTP: images and tokens arrive unencrypted; give --http-tls-cert "
                        "and --http-tls-key for HTTPS")
        return self

    @property
    def dicom_port(self) -> int:
        return self._scp.server_address[1]

    @property
    def http_port(self) -> int:
        return int(self._http.effective_port)          # waitress may give it as text

    def _watch(self) -> None:
        """Hand each study on once it has been quiet; wakes a few times per quiet period."""
        tick = min(max(self.config.quiet_s / 4, 0.05), 1.0)
        while not self._stopping.wait(tick):
            self._hand_on(self.inbox.take_quiet())

    def _hand_on(self, batches: list[Batch]) -> None:
        for batch in batches:
            log.info("study %s complete (quiet %.1f s): batch %d of %d instance(s)", batch.study_tag,
                     self.config.quiet_s, batch.number, len(batch.instances))
            self._workers.submit(self._report, batch)

    def _report(self, batch: Batch) -> None:
        try:
            self.report(batch)
        except Exception:
            log.exception("batch %d (study %s) failed", batch.number, batch.study_tag)
        finally:
            self.inbox.release(batch)

    def stop(self) -> None:
        """Close both doors, report on every study held (quiet or not), wait for the reports."""
        self._stopping.set()
        if self._scp:
            self._scp.shutdown()
        if self._http:
            self._http.close()
        if self._watcher.is_alive():
            self._watcher.join()
        self._hand_on(self.inbox.take_quiet(everything=True))
        self._workers.shutdown(wait=True)
        log.info("DICOM node %s stopped", self.config.ae_title)


def _describe(tls: TLSFiles | None) -> str:
    if tls is None:
        return "plaintext"
    return "DICOM TLS, senders' certificates required" if tls.ca else "DICOM TLS, no client certificate asked"
