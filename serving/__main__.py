"""``python -m serving push|labels|promote|rollback|site-accept|site-revoke|serve|configs|protos``:
the model repository, the operators' commands that move its labels and its sites' operating
points (each recorded in the model's history), the embedded server and the TF Serving protocol
descriptors the gateway uses.

    python -m serving labels M --model-repo R            # stable, canary, versions, sites, the last decisions
    python -m serving promote M V --model-repo R --reason "..." [--serving HOST:PORT]
    python -m serving rollback M --model-repo R --reason "..."
    python -m serving site-accept M --profile FILE --model-repo R --reason "..."
    python -m serving site-revoke M SITE --model-repo R --reason "..."
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from components.core import cli, tls


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="copy an export into the repository as its next version (atomic)")
    p.add_argument("--export", required=True, help="SavedModel folder written by components.export")
    p.add_argument("--model-repo", required=True)
    p.add_argument("--keep", type=int, default=3, help="versions kept per model (default 3)")
    p.add_argument("--base-path", help="repository path as the server sees it (e.g. /models on the cluster)")
    p.add_argument("--canary", action="store_true",
                   help="label the new version canary (an operator's blessing; a pipeline's comes from its challenge)")
    p.add_argument("--reason", default="", help="why (recorded with the canary decision)")
    la = sub.add_parser("labels", help="a model's stable and canary versions and its last decisions")
    la.add_argument("model")
    la.add_argument("--model-repo", required=True)
    la.add_argument("--last", type=int, default=10, help="decisions shown (default 10)")
    pr = sub.add_parser("promote", help="make a verified version the stable one (recorded)")
    pr.add_argument("model")
    pr.add_argument("version", type=int)
    pr.add_argument("--model-repo", required=True)
    pr.add_argument("--reason", required=True, help="why (recorded)")
    pr.add_argument("--serving", help="model server host:port: promote only once the version is AVAILABLE there")
    tls.add_arguments(pr, os.environ, "serving-tls", "SERVING_TLS", "the model server over TLS: this client's")
    pr.add_argument("--base-path")
    rb = sub.add_parser("rollback", help="undo the last roll-out: drop the canary, else stable back to the one before")
    rb.add_argument("model")
    rb.add_argument("--model-repo", required=True)
    rb.add_argument("--reason", required=True, help="why (recorded)")
    rb.add_argument("--base-path")
    sa = sub.add_parser("site-accept", help="put a site's accepted operating point in effect (recorded)")
    sa.add_argument("model")
    sa.add_argument("--profile", required=True, help="the site profile written by site acceptance (JSON)")
    sa.add_argument("--model-repo", required=True)
    sa.add_argument("--reason", required=True, help="why (recorded)")
    sr = sub.add_parser("site-revoke", help="take a site's operating point out of effect: the model's own (recorded)")
    sr.add_argument("model")
    sr.add_argument("site")
    sr.add_argument("--model-repo", required=True)
    sr.add_argument("--reason", required=True, help="why (recorded)")
    s = sub.add_parser("serve", help="the embedded TF-Serving-compatible gRPC server")
    s.add_argument("--model-repo", required=True)
    s.add_argument("--port", type=int, default=8500, help="gRPC port (tensorflow_model_server --port)")
    s.add_argument("--rest-port", type=int, help="TF Serving REST API port (tensorflow_model_server --rest_api_port)")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    s.add_argument("--poll-seconds", type=float, default=2.0)
    s.add_argument("--no-batching", action="store_true")
    tls.add_arguments(s, os.environ, "tls", "SERVING_SERVER_TLS", "the gRPC port over TLS: the server's")
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
    from serving import configs, layout, repository, sites

    if args.command == "push":
        canary = {"blessed": True, "reason": args.reason or "pushed by an operator with --canary"} if args.canary else None
        r = repository.push(args.export, args.model_repo, args.keep, args.base_path, canary=canary)
        print(f"{r.model}: {r.reason}")
        if not r.pushed and r.reason.startswith("refused"):
            raise cli.UserError(f"{r.model}: {r.reason}")
    elif args.command == "labels":
        print(describe(args.model_repo, args.model, args.last))
    elif args.command == "promote":
        evidence = {}
        if args.serving:
            evidence = available_on(args.serving, args.model, args.version, tls.from_arguments(args, "serving-tls"))
        entry = repository.promote(args.model_repo, args.model, args.version, args.reason, evidence, base_path=args.base_path)
        print(f"{args.model}: stable {entry['from']} -> {entry['to']} ({args.reason})")
    elif args.command == "rollback":
        entry = repository.rollback(args.model_repo, args.model, args.reason, base_path=args.base_path)
        print(f"{args.model}: {entry['label']} {entry['from']} rolled back; stable is {layout.labels(args.model_repo, args.model).get('stable')}")
    elif args.command == "site-accept":
        entry = sites.accept(args.model_repo, args.model, args.profile, args.reason)
        profile = entry["evidence"]["profile"]
        print(f"{args.model}: site {profile['site']} at version {profile['version']}: temperature "
              f"{profile['temperature']:g}, threshold {profile['threshold']:g} ({args.reason})")
    elif args.command == "site-revoke":
        entry = sites.revoke(args.model_repo, args.model, args.site, args.reason)
        print(f"{args.model}: site {args.site} revoked (was version {entry['from']}); it gets the model's own "
              "operating point")
    elif args.command == "configs":
        configs.write_configs(args.model_repo, args.base_path)
        print(f"wrote {args.model_repo}/{configs.MODELS_CONFIG} and {configs.BATCHING_CONFIG}")
    else:
        from serving.server import Server

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        server = Server(args.model_repo, args.port, args.host, args.poll_seconds, not args.no_batching,
                        rest_port=args.rest_port, tls=tls.from_arguments(args, "tls"))
        loaded = {name: sorted(v) for name, v in server.store.loaded.items()}
        rest = f", REST API on {args.host}:{server.rest_port}" if server.rest_port else ""
        secure = " over TLS" if args.tls_cert else ""
        print(f"serving {len(loaded)} model(s) on {args.host}:{server.port} (TensorFlow Serving gRPC API{secure}{rest}): "
              f"{loaded}", flush=True)
        server.wait()


def describe(root, model: str, last: int = 10) -> str:
    from serving import history, layout, sites

    layout.model_folder(Path(root), model)
    current = layout.labels(root, model)
    lines = [f"{model}: stable {current.get('stable', '-')}, canary {current.get('canary', '-')}; "
             f"versions {layout.versions(root, model)}"]
    for site, p in sorted(sites.current(root, model).items()):
        lines.append(f"  site {site}: version {p['version']}, temperature {p['temperature']:g}, threshold "
                     f"{p['threshold']:g}, acceptance {p['acceptance_sha256'][:12]}")
    for r in history.read(root, model)[-last:]:
        words = [r["action"], r.get("label") or "",
                 "" if r.get("to") is None and r.get("from") is None else f"{r.get('from') or '-'} -> {r.get('to') or '-'}"]
        lines.append(f"  {r['time']} {r['user']}: {' '.join(w for w in words if w)}: {r['reason']}")
    return "\n".join(lines)


def available_on(address: str, model: str, version: int, tls_files=None) -> dict:
    """The model server's word that ``version`` is AVAILABLE (the promotion's evidence)."""
    from serving.client import ServingClient, ServingRejected, ServingUnavailable

    client = ServingClient(address, deadline_s=5.0, tls=tls_files)
    try:
        states = dict(client.status(model))
    except (ServingRejected, ServingUnavailable) as e:
        raise cli.UserError(f"could not ask {address} about {model}: {e}") from None
    finally:
        client.close()
    if states.get(version) != "AVAILABLE":
        raise cli.UserError(f"{model} version {version} is {states.get(version, 'not loaded')} on {address}: a label "
                            "moves only to a version that loaded and warmed up there")
    return {"model_server": address, "status": {str(v): s for v, s in states.items()}}


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _run))
