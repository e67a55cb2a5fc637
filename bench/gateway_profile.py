"""Where the gateway's time goes on one prediction at 224 px: cProfile over the gateway's own
request handling (the Flask app in this process, as waitress runs it in a worker thread) against
the real model server in a separate process, grouped by what the code does.

Categories come from the file each function lives in; "waiting for the model server" is the
time the gRPC call blocks (the model's forward pass, not gateway overhead). waitress' own HTTP
parsing is not in this profile (its worker threads are not profiled); ``bench.gateway``
measures it, with everything else, as the gateway process' CPU time per request.

    python -m bench.gateway_profile [--requests 200] [--image-size 224] [--backbone resnet50]
"""
from __future__ import annotations

import argparse
import contextlib
import base64
import cProfile
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.gateway import MODALITY, ROOT, STRATEGY, export_untrained
from serving.server import free_port

# (category, path fragments) in order: the first that matches a function's file names it
CATEGORIES = (
    # a blocking gRPC call waits in next_event; a future's caller in a lock's acquire
    ("waiting for the model server", ("'next_event' of 'grpc", "'acquire' of '_thread.lock'")),
    ("gRPC client: request, response protos", ("grpc/", "serving/client.py", "google/protobuf", "tensorflow_serving")),
    ("image check: header, full decode", ("components/imaging/images.py", "PIL/")),
    ("input statistics (drift)", ("components/imaging/inputstats.py", "numpy/")),
    ("metrics (Prometheus)", ("prometheus_client/",)),
    ("identity: token check (PyJWT, cryptography)", ("jwt/", "cryptography/", "components/core/identity.py")),
    ("access audit: event, hash chain, append", ("components/core/audit.py", "components/core/phi.py", "hashlib",
                                                 "hmac")),
    ("rate limit (Flask-Limiter)", ("flask_limiter/", "limits/")),
    ("JSON and base64: body, answer", ("json/", "base64.py", "binascii", "flask/json")),
    ("Flask and Werkzeug: request, routing, response", ("flask/", "werkzeug/", "jinja2/", "click/")),
    ("gateway: uploads, service, state, cards", ("gateway/",)),
)


def category(key: tuple) -> str:
    file, line, name = key
    where = f"{file}:{name}"
    for label, fragments in CATEGORIES:
        if any(f in where for f in fragments):
            return label
    return "other (Python itself, logging, locks)"


def breakdown(profile: cProfile.Profile, requests: int) -> list[tuple[str, float]]:
    """Milliseconds per request by category, from each function's own time (tottime)."""
    totals: dict[str, float] = {}
    for key, (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():
        label = category(key)
        totals[label] = totals.get(label, 0.0) + tottime
    return sorted(((k, v * 1000 / requests) for k, v in totals.items()), key=lambda kv: -kv[1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gateway_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--backbone", default="resnet50")
    args = ap.parse_args(argv)
    from PIL import Image

    from components.core import catalog
    from gateway.app import GatewayConfig, create_app
    from serving import repository
    from serving.client import ServingClient

    size, n = args.image_size, args.requests
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    body = json.dumps({"image": {"b64": base64.b64encode(png).decode()}})
    name = catalog.model_name(MODALITY, args.backbone, STRATEGY)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        export_untrained(args.backbone, size, Path(tmp) / "export")
        repo = Path(tmp) / "repo"
        repository.push(Path(tmp) / "export", repo)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "serving", "serve", "--model-repo", str(repo), "--port",
                                   str(port), "--no-batching"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            client = ServingClient(f"127.0.0.1:{port}", deadline_s=120)
            deadline = time.monotonic() + 180
            while True:
                try:
                    client.predict(name, png)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            from components.core.identity import IdentityConfig
            from tests.oidc import Issuer

            issuer = stack.enter_context(Issuer())
            app = create_app(GatewayConfig(repo, f"127.0.0.1:{port}", deadline_s=120,
                                           auth=IdentityConfig(issuer.url, issuer.audience),
                                           audit_log=repo.parent / "audit.jsonl", phi_key=b"bench-phi-key-" + b"0" * 24,
                                           rate_limit="1000000/minute")).test_client()
            app.environ_base["HTTP_AUTHORIZATION"] = issuer.headers()["Authorization"]
            url = f"/api/v1/models/{name}:predict"
            for _ in range(10):
                assert app.post(url, data=body, content_type="application/json").status_code == 200
            profile, walls, direct = cProfile.Profile(), [], []
            for _ in range(n):
                t = time.perf_counter()
                profile.enable()
                response = app.post(url, data=body, content_type="application/json")
                profile.disable()
                walls.append(time.perf_counter() - t)
                assert response.status_code == 200
                t = time.perf_counter()
                client.predict(name, png)
                direct.append(time.perf_counter() - t)
            client.close()
        finally:
            server.terminate()
            server.wait(30)

    rows = breakdown(profile, n)
    waiting = dict(rows).get("waiting for the model server", 0.0)
    own = sum(v for k, v in rows if k != "waiting for the model server")
    print(f"gateway profile: {args.backbone}, {size} px PNG ({len(png):,} bytes), {n} requests, "
          f"in-process Flask app -> gRPC -> model server (separate process)")
    print(f"  request p50 {np.median(walls) * 1000:.1f} ms, direct gRPC p50 {np.median(direct) * 1000:.1f} ms; "
          f"under cProfile, which slows Python code about 2x")
    print(f"\n  {'where the time goes, per request':<52} {'ms':>7}  share of the gateway's own")
    for label, ms in rows:
        share = "" if label == "waiting for the model server" else f"{ms / own:6.0%}"
        print(f"  {label:<52} {ms:7.2f}  {share}")
    print(f"  {'gateway own work (everything but the wait)':<52} {own:7.2f}")
    print(f"\n  the model server's answer took {waiting:.1f} ms of each request's wall time")
    others = sorted(((v[2], k) for k, v in pstats.Stats(profile).stats.items()
                     if category(k).startswith("other")), reverse=True)[:8]
    print("  the largest of 'other':", "; ".join(f"{k[0].rsplit('/', 1)[-1]}:{k[2]} {t * 1000 / n:.2f} ms"
                                                for t, k in others))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
