"""The Flask gateway: ``create_app(GatewayConfig(...))`` (configuration passed in, no globals).

Blueprints: ``pages`` (HTML for people) and ``api`` (JSON for programs); their shared state is
``gateway.state``, their errors ``gateway.errors``. It talks to the model server only over gRPC
(serving.client) and reads model cards from the model repository. It is served by waitress
(``python -m gateway``); ``gateway.wsgi:app`` is the same app for any other WSGI server.
"""
from __future__ import annotations

import logging
import os
import time

from flask import Flask, g, request

from components.core import audit
from components.core.identity import IdentityConfig, TokenVerifier
from gateway import access, state
from gateway.state import GatewayConfig  # noqa: F401 (the app's configuration, imported from here)
from gateway.uploads import InMemoryRequest


# Pages load only their own stylesheet and images (the Grad-CAM overlay is a data: URL) and run
# no script; nobody may frame them (clickjacking), and browsers must not sniff content types.
log = logging.getLogger("gateway")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # browsers keep to HTTPS for a year once they have seen this over TLS (ignored over plain HTTP)
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}


def create_app(config: GatewayConfig) -> Flask:
    from gateway import api, pages, v2

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    # multipart overhead on top of the image; the exact byte limit is checked on the image itself
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_upload_bytes * 1.4) + 64 * 1024
    shared = state.init_app(app, config)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(v2.blueprint)
    app.register_blueprint(pages.blueprint)
    access.install(app, _access(config), config.rate_limit)

    @app.before_request
    def _start():
        g.started = time.perf_counter()
        shared.begin()

    @app.teardown_request
    def _finish(_):
        shared.end()

    @app.after_request
    def _secure(response):
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response

    @app.after_request
    def _observe(response):
        endpoint = request.endpoint or "unknown"
        metrics = shared.metrics
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    return app


def _access(config: GatewayConfig) -> access.Access:
    """Identity, audit and limits from the configuration; refuses an open gateway by omission."""
    if isinstance(config.auth, IdentityConfig):
        if config.audit_log is None or not config.phi_key:
            raise ValueError("a gateway that checks tokens keeps an access audit: give it an audit log and the PHI key")
        verifier = TokenVerifier(config.auth)
    elif config.auth == "none":
        log.warning("AUTHENTICATION IS OFF (--auth none): every request is a local developer with every role. "
                    "For local development on loopback only; never in front of patient data.")
        verifier = None
    else:
        raise ValueError("GatewayConfig.auth: give the identity provider (IdentityConfig), or 'none' for local "
                         "development")
    chained = audit.ChainedLog(config.audit_log) if config.audit_log else None
    return access.Access(verifier, chained, config.phi_key or os.urandom(32), access.limiter(config.rate_limit_storage))

