"""The Flask gateway: ``create_app(GatewayConfig(...))`` (configuration passed in, no globals).

Blueprints: ``pages`` (HTML for people) and ``api`` (JSON for programs). It talks to the model
server only over gRPC (serving.client) and reads model cards from the model repository.
Production: ``gunicorn 'gateway.wsgi:app'`` with the same settings from the environment.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.deployed import Deployed
from gateway.uploads import InMemoryRequest
from serving.client import ServingClient


@dataclass(frozen=True)
class GatewayConfig:
    model_repo: Path
    serving: str = "127.0.0.1:8500"
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000           # 20000x20000 PNGs (decompression bombs) are refused
    deadline_s: float = 5.0
    retries: int = 2


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("gateway_request_seconds", "HTTP request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.predictions = Counter("gateway_predictions_total", "predictions served", ["model"], registry=self.registry)
        self.rejected = Counter("gateway_uploads_rejected_total", "uploads refused", ["status"], registry=self.registry)
        self.unavailable = Counter("gateway_serving_unavailable_total", "model server unreachable", registry=self.registry)


# Pages load only their own stylesheet and images (the Grad-CAM overlay is a data: URL) and run
# no script; nobody may frame them (clickjacking), and browsers must not sniff content types.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(config: GatewayConfig) -> Flask:
    from gateway import api, pages

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    # multipart overhead on top of the image; the exact byte limit is checked on the image itself
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_upload_bytes * 1.4) + 64 * 1024
    app.extensions["gateway"] = {
        "config": config,
        "deployed": Deployed(config.model_repo),
        "client": ServingClient(config.serving, config.deadline_s, config.retries),
        "metrics": Metrics(),
    }
    app.register_blueprint(api.blueprint)
    app.register_blueprint(pages.blueprint)

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _secure(response):
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response

    @app.after_request
    def _observe(response):
        endpoint = request.endpoint or "unknown"
        metrics = app.extensions["gateway"]["metrics"]
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    return app


def parts(app: Flask | None = None) -> dict:
    from flask import current_app

    return (app or current_app).extensions["gateway"]
