"""``python -m gateway --model-repo DIR --serving HOST:PORT --port 8080``: the gateway on waitress,
on one machine and in the container alike (settings also from MODEL_REPO, SERVING_ADDRESS).

Why waitress and not gunicorn's threads: a thread worker reads a request's body itself, so 16
clients trickling uploads held all 2 x 8 threads and ``/healthz`` stopped answering (the
liveness probe would then kill the pod). Waitress reads every request, body included, in one
asynchronous I/O loop and hands a thread only a complete request; slow clients cost a buffer
each, bounded by ``connection_limit``. Bodies are held in memory only, within a byte budget
(components.core.http): an uploaded image never reaches the disk.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from components.core import cli, identity, phi, tls
from gateway.app import GatewayConfig, create_app

log = logging.getLogger("gateway")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gateway", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-repo", default=os.environ.get("MODEL_REPO"), required="MODEL_REPO" not in os.environ,
                    help="model repository folder (env MODEL_REPO)")
    ap.add_argument("--serving", default=os.environ.get("SERVING_ADDRESS", "127.0.0.1:8500"),
                    help="model server gRPC address (env SERVING_ADDRESS)")
    tls.add_arguments(ap, os.environ, "serving-tls", "SERVING_TLS", "the model server over TLS: this gateway's")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    ap.add_argument("--port", type=int, default=8080)
    tls.add_arguments(ap, os.environ, "tls", "GATEWAY_TLS", "HTTPS for a gateway run alone (on the cluster TLS ends "
                                                            "at the Ingress): the gateway's")
    ap.add_argument("--deadline", type=float, default=float(os.environ.get("PREDICT_DEADLINE_S", 5.0)),
                    help="seconds a prediction may take")
    ap.add_argument("--threads", type=int, default=8, help="requests handled at once (each holds one)")
    ap.add_argument("--connection-limit", type=int, default=256,
                    help="open connections at most; slow clients hold a connection, not a thread")
    ap.add_argument("--body-budget-mb", type=int, default=int(os.environ.get("BODY_BUDGET_MB", 256)),
                    help="request bodies held in memory at once, in MB (never spooled to disk); beyond it a "
                         "request is answered 503 with Retry-After (env BODY_BUDGET_MB)")
    ap.add_argument("--drain-delay", type=float, default=5.0,
                    help="seconds /readyz answers 503 after SIGTERM before the gateway stops taking requests")
    ap.add_argument("--drain-timeout", type=float, default=25.0,
                    help="seconds then allowed for requests in flight to finish")
    ap.add_argument("--canary-percent", type=float, default=float(os.environ.get("CANARY_PERCENT", 0.0)),
                    help="share of a model's predictions sent to its canary version, when it has one (default 0)")
    identity.add_door_arguments(ap, os.environ, "GATEWAY_AUTH", "every request but the probes carries a bearer token "
                                                                "from the identity provider")
    ap.add_argument("--rate-limit", default=os.environ.get("RATE_LIMIT", "120/minute"),
                    help="predictions per subject, e.g. 120/minute (env RATE_LIMIT)")
    ap.add_argument("--rate-limit-storage", default=os.environ.get("RATE_LIMIT_STORAGE", "memory://"),
                    help="where the counts live: memory:// (one replica) or redis://HOST:PORT (several; env "
                         "RATE_LIMIT_STORAGE)")
    return ap


def server(config: GatewayConfig, host: str, port: int, threads: int = 8, connection_limit: int = 256,
           body_budget_bytes: int = 256 << 20, tls_files: tls.TLSFiles | None = None):
    """(app, server) for the gateway (``.run()`` serves, ``.close()`` stops; port 0 picks one):
    waitress, or Hypercorn over TLS with ``tls_files``. Request bodies stay in memory,
    ``body_budget_bytes`` of them at once (components.core.http)."""
    from components.core import http

    app = create_app(config)
    if tls_files:
        return app, http.TLSServer(app, tls_files, body_budget_bytes, app.config["MAX_CONTENT_LENGTH"], host, port,
                                   threads)
    return app, http.create_server(app, body_budget_bytes, app.config["MAX_CONTENT_LENGTH"], host=host, port=port,
                                   threads=threads, connection_limit=connection_limit,
                                   channel_timeout=30,           # a connection silent for 30 s is closed
                                   asyncore_use_poll=True,       # select() stops at 1024 descriptors
                                   ident="gateway")              # no server version in the Server header


def config_from(args) -> GatewayConfig:
    return GatewayConfig(Path(args.model_repo), args.serving, tls.from_arguments(args, "serving-tls"),
                         deadline_s=args.deadline,
                         canary_percent=args.canary_percent,
                         auth=identity.config_from(args) if args.auth == "oidc" else "none",
                         audit_log=Path(args.audit_log) if args.audit_log else None,
                         phi_key=phi.load_key(args.phi_key_file), rate_limit=args.rate_limit,
                         rate_limit_storage=args.rate_limit_storage)


def _run(args, _):
    if not Path(args.model_repo).is_dir():
        raise FileNotFoundError(f"{args.model_repo} is not a model repository folder")
    if args.auth == "none" and not identity.loopback(args.host):
        raise cli.UserError(f"--auth none serves without any identity check: it binds loopback only, not {args.host}")
    config = config_from(args)
    https = tls.from_arguments(args, "tls")
    app, http = server(config, args.host, args.port, args.threads, args.connection_limit, args.body_budget_mb << 20,
                       https)
    shared = app.extensions["gateway"]

    def drain():
        """SIGTERM (Kubernetes stopping the pod): say "not ready" first so no new requests are
        routed here, keep answering meanwhile, let requests in flight finish, then stop."""
        shared.draining.set()
        log.info("SIGTERM: /readyz answers 503; draining for %.0f s", args.drain_delay)
        time.sleep(args.drain_delay)
        if not shared.wait_idle(args.drain_timeout):
            log.warning("stopping with requests still in flight after %.0f s", args.drain_timeout)
        http.close()

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=drain, daemon=True).start())
    print(f"gateway on http{'s' if https else ''}://{args.host}:{http.effective_port}/ (model server {args.serving})",
          flush=True)
    http.run()
    print("gateway stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _run))
