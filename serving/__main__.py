"""``python -m serving push|serve|configs|protos``: the model repository, the embedded server and
the TF Serving protocol descriptors the gateway uses."""
from __future__ import annotations

import argparse
import logging

from components import cli


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="copy an export into the repository as its next version (atomic)")
    p.add_argument("--export", required=True, help="SavedModel folder written by components.export")
    p.add_argument("--model-repo", required=True)
    p.add_argument("--keep", type=int, default=3, help="versions kept per model (default 3)")
    p.add_argument("--base-path", help="repository path as the server sees it (e.g. /models on the cluster)")
    s = sub.add_parser("serve", help="the embedded TF-Serving-compatible gRPC server")
    s.add_argument("--model-repo", required=True)
    s.add_argument("--port", type=int, default=8500, help="gRPC port (tensorflow_model_server --port)")
    s.add_argument("--rest-port", type=int, help="TF Serving REST API port (tensorflow_model_server --rest_api_port)")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    s.add_argument("--poll-seconds", type=float, default=2.0)
    s.add_argument("--no-batching", action="store_true")
    c = sub.add_parser("configs", help="rewrite models.config and batching.config from what the repository holds")
    c.add_argument("--model-repo", required=True)
    c.add_argument("--base-path")
    sub.add_parser("protos", help="rebuild serving/tensorflow_serving.binpb from the installed tensorflow-serving-api")
    return ap


def _run(args, _):
    if args.command == "protos":       # before anything imports serving.protos, which reads the file
        from serving import protos_build

        print(f"wrote {protos_build.write()}")
        return
    from serving import repository

    if args.command == "push":
        r = repository.push(args.export, args.model_repo, args.keep, args.base_path)
        print(f"{r.model}: {r.reason}")
    elif args.command == "configs":
        repository.write_configs(args.model_repo, args.base_path)
        print(f"wrote {args.model_repo}/{repository.MODELS_CONFIG} and {repository.BATCHING_CONFIG}")
    else:
        from serving.server import Server

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        server = Server(args.model_repo, args.port, args.host, args.poll_seconds, not args.no_batching,
                        rest_port=args.rest_port)
        loaded = {name: sorted(v) for name, v in server.store.loaded.items()}
        rest = f", REST API on {args.host}:{server.rest_port}" if server.rest_port else ""
        print(f"serving {len(loaded)} model(s) on {args.host}:{server.port} (TensorFlow Serving gRPC API{rest}): "
              f"{loaded}", flush=True)
        server.wait()


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _run))
