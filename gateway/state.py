"""The gateway's shared state, typed, in one place (as Flask's tutorial keeps its database in
``db.py``): the configuration, what is deployed, the model-server client, the metrics, and the
requests in flight for a drain. ``create_app`` makes one per app; blueprints read it with
``current()`` instead of importing the app module."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.deployed import Deployed
from gateway.uploads import prepare, read_image
from serving.client import ServingClient


@dataclass(frozen=True)
class GatewayConfig:
    model_repo: Path
    serving: str = "127.0.0.1:8500"
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000           # 20000x20000 PNGs (decompression bombs) are refused
    deadline_s: float = 5.0
    retries: int = 2
    max_decodes: int = 2                   # images decoded at once per process (memory, not speed)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("gateway_request_seconds", "HTTP request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.predictions = Counter("gateway_predictions_total", "predictions served", ["model"], registry=self.registry)
        self.rejected = Counter("gateway_uploads_rejected_total", "uploads refused", ["status"], registry=self.registry)
        self.unavailable = Counter("gateway_serving_unavailable_total", "model server unreachable", registry=self.registry)


@dataclass
class GatewayState:
    config: GatewayConfig
    deployed: Deployed
    client: ServingClient
    metrics: Metrics
    decodes: threading.BoundedSemaphore
    draining: threading.Event = field(default_factory=threading.Event)   # set: /readyz says 503
    _in_flight: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    def read_upload(self, request, model_size: int | None = None) -> bytes:
        """The request's image for a model of input ``model_size``; at most ``max_decodes``
        decode at once, so concurrent large uploads cannot multiply the decode memory."""
        with self.decodes:
            return read_image(request, self.config.max_upload_bytes, self.config.max_pixels, model_size)

    def prepare_image(self, data: bytes, model_size: int | None = None) -> bytes:
        """As read_upload, for image bytes that came another way (the v2 protocol's tensors)."""
        with self.decodes:
            return prepare(data, self.config.max_upload_bytes, self.config.max_pixels, model_size)

    def begin(self) -> None:
        with self._idle:
            self._in_flight += 1

    def end(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (a drain before exit); False if time ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight <= 0, timeout)


def init_app(app: Flask, config: GatewayConfig) -> GatewayState:
    client = ServingClient(config.serving, config.deadline_s, config.retries)
    state = GatewayState(config, Deployed(config.model_repo), client, Metrics(),
                         threading.BoundedSemaphore(config.max_decodes))
    app.extensions["gateway"] = state
    return state


def current() -> GatewayState:
    return current_app.extensions["gateway"]
