"""``python -m gateway --model-repo DIR --serving HOST:PORT --port 8080``: the gateway on Flask's
threaded server (development and one machine); on a cluster run gunicorn on gateway.wsgi:app."""
from __future__ import annotations

import argparse
from pathlib import Path

from components import cli
from gateway.app import GatewayConfig, create_app


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    ap.add_argument("--model-repo", required=True)
    ap.add_argument("--serving", default="127.0.0.1:8500", help="model server gRPC address")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--deadline", type=float, default=5.0, help="seconds a prediction may take")
    return ap


def _run(args, _):
    if not Path(args.model_repo).is_dir():
        raise FileNotFoundError(f"{args.model_repo} is not a model repository folder")
    app = create_app(GatewayConfig(Path(args.model_repo), args.serving, deadline_s=args.deadline))
    print(f"gateway on http://{args.host}:{args.port}/ (model server {args.serving})", flush=True)
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _run))
