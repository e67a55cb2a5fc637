"""The gateway's shared state, typed, in one place (as Flask's tutorial keeps its database in
``db.py``): the configuration, what is deployed, the model-server client, the metrics, and the
requests in flight for a drain. ``create_app`` makes one per app; blueprints read it with
``current()`` instead of importing the app module."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram

from components.core.identity import IdentityConfig
from components.core.tls import TLSFiles
from components.imaging import inputstats
from gateway.access import note_upload
from gateway.deployed import Deployed
from gateway.uploads import JsonLimits, Upload, parse_json, prepare, read_image
from serving.client import ServingClient


@dataclass(frozen=True)
class GatewayConfig:
    model_repo: Path
    serving: str = "127.0.0.1:8500"
    serving_tls: TLSFiles | None = None    # the model server over TLS (its CA; this gateway's certificate for mTLS)
    max_upload_bytes: int = 48 * 1024 * 1024    # an uncompressed full-field mammogram (DICOM) is ~27 MB
    max_pixels: int = 40_000_000           # 20000x20000 PNGs (decompression bombs) are refused
    json_limits: JsonLimits = JsonLimits()  # a JSON body's bytes and values (gateway.uploads.JsonLimits)
    deadline_s: float = 5.0
    retries: int = 2
    max_decodes: int = 2                   # images decoded at once per process (memory, not speed)
    canary_percent: float = 0.0            # share of a model's predictions sent to its canary (KServe's canaryTrafficPercent)
    canary_seed: int | None = None         # seeds the traffic split (tests); None: from the OS
    repository_refresh_s: float = 1.0      # cards and labels are re-read at most this often
    # who may ask: the OpenID provider's tokens, or "none" (local development on loopback only);
    # no default, so a gateway never starts open by omission
    auth: IdentityConfig | str | None = None
    audit_log: Path | None = None          # the access audit (hash-chained JSON lines); required with tokens
    phi_key: bytes | None = None           # pseudonymizes studies and instances in the audit
    rate_limit: str = "120/minute"         # predictions per subject (Flask-Limiter's notation)
    rate_limit_storage: str = "memory://"  # redis://... where several replicas share the counts


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("gateway_request_seconds", "HTTP request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.predictions = Counter("gateway_predictions_total", "predictions served", ["model"], registry=self.registry)
        self.rejected = Counter("gateway_uploads_rejected_total", "uploads refused", ["status"], registry=self.registry)
        self.unavailable = Counter("gateway_serving_unavailable_total", "model server unreachable", registry=self.registry)
        # per model and version: what a roll-out is watched by
        self.version_requests = Counter("gateway_version_requests_total", "predictions per model version and outcome",
                                        ["model", "version", "label", "outcome"], registry=self.registry)
        self.version_latency = Histogram("gateway_version_seconds", "model server call latency per model version",
                                         ["model", "version"], registry=self.registry,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.rate_limited = Counter("gateway_rate_limited_total", "requests refused by a subject's rate limit",
                                    ["endpoint"], registry=self.registry)
        self.canary_fallbacks = Counter("gateway_canary_fallbacks_total", "canary requests answered by stable "
                                        "(the canary was not available)", ["model"], registry=self.registry)
        # drift: the served inputs' statistics and the predicted probability (components.imaging.inputstats)
        self.inputs = {f: Histogram(f"gateway_input_{f}", f"served images: {f}", ["model", "version"],
                                    registry=self.registry, buckets=inputstats.BUCKETS[f]) for f in inputstats.FEATURES}
        self.probability = Histogram("gateway_prediction_probability", "served probability", ["model", "version"],
                                     registry=self.registry, buckets=inputstats.BUCKETS["probability"])

    def observe(self, model: str, version: int, label: str | None, probability: float | None,
                stats: dict | None) -> None:
        """One answered prediction: its version's count, and the drift histograms."""
        v = str(version)
        self.version_requests.labels(model, v, label or "latest", "ok").inc()
        if probability is not None:
            self.probability.labels(model, v).observe(probability)
        for feature, value in (stats or {}).items():
            self.inputs[feature].labels(model, v).observe(value)


class Router:
    """Which version a model's request goes to: its canary for ``percent`` % of requests when it
    has one (KServe's canaryTrafficPercent), its stable version otherwise; a model without
    labels (a repository from before the history) gets the server's latest."""

    def __init__(self, percent: float, seed: int | None = None):
        if not 0 <= percent <= 100:
            raise ValueError(f"canary share {percent} must be between 0 and 100 (percent)")
        self.percent = percent
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def label(self, labels: dict[str, int]) -> str | None:
        if "canary" in labels and self.percent > 0:
            with self.lock:
                if self.rng.random() * 100 < self.percent:
                    return "canary"
        return "stable" if "stable" in labels else None


@dataclass
class GatewayState:
    config: GatewayConfig
    deployed: Deployed
    client: ServingClient
    metrics: Metrics
    decodes: threading.BoundedSemaphore
    router: Router
    draining: threading.Event = field(default_factory=threading.Event)   # set: /readyz says 503
    _in_flight: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    def read_upload(self, request, model_size: int | None = None, modality: str | None = None) -> Upload:
        """The request's image for a model of input ``model_size`` and ``modality`` (a DICOM
        upload must be an image of that modality); at most ``max_decodes`` decode at once, so
        concurrent large uploads cannot multiply the decode memory."""
        with self.decodes:
            upload = read_image(request, self.config.max_upload_bytes, self.config.max_pixels, model_size, modality,
                                self.config.json_limits)
        note_upload(upload)
        return upload

    def read_json(self, data: bytes):
        """A JSON request body parsed within its limits, in the bounded section (as a decode)."""
        with self.decodes:
            return parse_json(data, self.config.json_limits)

    def prepare_image(self, data: bytes, model_size: int | None = None, modality: str | None = None) -> Upload:
        """As read_upload, for image bytes that came another way (the v2 protocol's tensors)."""
        with self.decodes:
            upload = prepare(data, self.config.max_upload_bytes, self.config.max_pixels, model_size, modality)
        note_upload(upload)
        return upload

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
    client = ServingClient(config.serving, config.deadline_s, config.retries, tls=config.serving_tls)
    state = GatewayState(config, Deployed(config.model_repo, config.repository_refresh_s), client, Metrics(),
                         threading.BoundedSemaphore(config.max_decodes), Router(config.canary_percent, config.canary_seed))
    app.extensions["gateway"] = state
    return state


def current() -> GatewayState:
    return current_app.extensions["gateway"]
