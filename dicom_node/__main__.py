"""``python -m dicom_node --gateway URL --store-to dicomweb URL | dimse HOST:PORT:AET``:
the DICOM node, configured by its options, until SIGTERM or Ctrl-C (then it stops receiving,
reports on every study it holds and exits)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from components.core import audit, cli, identity, phi, tls
from components.core.identity import ClientCredentials
from dicom_node import pacs, sites
from dicom_node.doors import Doors, parse_senders
from dicom_node.node import Node, NodeConfig
from dicom_node.report import Retry

MODALITIES = ("mammography", "ultrasound")
STRATEGIES = ("unfrozen", "progressive")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m dicom_node", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--store-to", nargs=2, required=True, metavar=("KIND", "TARGET"),
                    help="where reports go: 'dicomweb URL' (STOW-RS) or 'dimse HOST:PORT:AET' (C-STORE)")
    ap.add_argument("--ae-title", default="BCIMAGING_AI", help="the node's AE title: associations must call it, "
                                                               "and it calls the PACS with it")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    ap.add_argument("--dicom-port", type=int, default=11112, help="C-STORE port")
    ap.add_argument("--http-port", type=int, default=8090, help="STOW-RS (POST /studies) and /healthz port")
    ap.add_argument("--strategy", action="append", default=[], metavar="[MODALITY=]STRATEGY",
                    help="the cohort asked: 'progressive' for every modality, or 'ultrasound=unfrozen' for one "
                         "(repeatable; default progressive)")
    ap.add_argument("--quiet-seconds", type=float, default=5.0,
                    help="a study is complete once no instance of it arrived for this long")
    ap.add_argument("--max-associations", type=int, default=4, help="DICOM associations at once")
    ap.add_argument("--http-connections", type=int, default=8,
                    help="HTTP connections at once; each may hold one STOW-RS body (at most the budget) in memory")
    ap.add_argument("--max-pdu", type=int, default=65536, help="largest PDU received, in bytes")
    ap.add_argument("--memory-budget-mb", type=float, default=512.0,
                    help="instances held in memory at most; beyond it a C-STORE answers 0xA700 (Out of Resources)")
    ap.add_argument("--retries", type=int, default=3, help="retries of a failed gateway request or PACS store")
    ap.add_argument("--retry-delay", type=float, default=2.0, help="seconds before the first retry, doubling")
    ap.add_argument("--workers", type=int, default=2, help="studies reported on at once")
    ap.add_argument("--gateway-timeout", type=float, default=60.0, help="seconds one gateway request may take")
    ap.add_argument("--sender", action="append", default=[], metavar="AET[=HOST[,HOST]]",
                    help="a PACS or modality that may C-STORE to the node, by calling AE title, optionally only from "
                         "these addresses (repeatable; at least one: unknown senders are rejected at association)")
    ap.add_argument("--site", action="append", default=[], metavar="AET=SITE",
                    help="images from this calling AE title (a --sender) are read at SITE's accepted operating point "
                         "(the gateway's ?site=; repeatable); others at the model's own")
    ap.add_argument("--site-institution", action="append", default=[], metavar="NAME=SITE",
                    help="images whose Institution Name is NAME (any case) at SITE's operating point, where their "
                         "AE title maps to none (a central PACS forwarding several sites; STOW-RS); repeatable")
    identity.add_door_arguments(ap, os.environ, "NODE_AUTH", "STOW-RS needs a bearer token and the node presents "
                                                             "its own to the gateway")
    ap.add_argument("--client-id", default=os.environ.get("NODE_CLIENT_ID"),
                    help="the node's client id at the identity provider; it asks the gateway with its own token "
                         "(OAuth2 client credentials; env NODE_CLIENT_ID)")
    ap.add_argument("--client-secret-file", default=os.environ.get("NODE_CLIENT_SECRET_FILE"),
                    help="a file holding the node's client secret (a mounted secret; env NODE_CLIENT_SECRET_FILE)")
    ap.add_argument("--gateway-audience", default=os.environ.get("GATEWAY_AUDIENCE"),
                    help="the audience of the gateway's tokens, when the provider needs it named (env GATEWAY_AUDIENCE)")
    ap.add_argument("--pacs-auth", default=os.environ.get("PACS_AUTH"),
                    help="credentials for a DICOMweb PACS: basic:USER:PASSWORD_FILE, bearer:TOKEN_FILE, or none "
                         "(anonymous, said explicitly; env PACS_AUTH)")
    tls.add_arguments(ap, os.environ, "dicom-tls", "DICOM_TLS", "DICOM TLS on the C-STORE door (without: plaintext)")
    tls.add_arguments(ap, os.environ, "pacs-tls", "PACS_TLS", "TLS to the PACS (HTTPS and DICOM TLS)")
    tls.add_arguments(ap, os.environ, "http-tls", "STOW_TLS", "HTTPS on the STOW-RS door (without: plain HTTP)")
    tls.add_arguments(ap, os.environ, "gateway-tls", "NODE_GATEWAY_TLS", "an https gateway: its CA, the node's")
    ap.add_argument("--allow-plaintext-pacs", action="store_true",
                    help="let reports go to an http:// PACS, or by DIMSE without TLS (a PACS on this host only)")
    return ap


def strategies(values: list[str]) -> dict[str, str]:
    """``--strategy`` values as modality -> strategy (later values win)."""
    chosen = dict.fromkeys(MODALITIES, "progressive")
    for value in values:
        modality, _, strategy = value.rpartition("=")
        if strategy not in STRATEGIES or (modality and modality not in MODALITIES):
            raise ValueError(f"--strategy {value!r}: give one of {', '.join(STRATEGIES)}, optionally after "
                             f"{'= or '.join(MODALITIES)}=")
        chosen.update({modality: strategy} if modality else dict.fromkeys(MODALITIES, strategy))
    return chosen


def doors_and_credentials(args: argparse.Namespace) -> tuple[Doors, ClientCredentials | None]:
    senders = parse_senders(args.sender)
    if not senders:
        raise ValueError("give at least one --sender AET: the node admits C-STORE from configured senders only")
    key = phi.load_key(args.phi_key_file)
    if args.auth == "none":
        if not identity.loopback(args.host):
            raise ValueError(f"--auth none takes STOW-RS without a token: it binds loopback only, not {args.host}")
        logging.getLogger("dicom_node").warning("AUTHENTICATION IS OFF (--auth none): STOW-RS takes anyone and "
                                                "the node asks the gateway without a token; local development only")
        chained = audit.ChainedLog(args.audit_log) if args.audit_log else None
        return Doors(senders, None, chained, key or os.urandom(32)), None
    config_ = identity.config_from(args)
    if not args.audit_log or not key:
        raise ValueError("a node that checks tokens keeps an access audit: give --audit-log and the PHI key")
    if not args.client_id or not args.client_secret_file:
        raise ValueError("give the node's own credential for the gateway: --client-id and --client-secret-file")
    secret = Path(args.client_secret_file).read_text().strip()
    credentials = ClientCredentials(config_.issuer, args.client_id, secret, args.gateway_audience,
                                    ca_file=config_.ca_file)
    return Doors(senders, identity.TokenVerifier(config_), audit.ChainedLog(args.audit_log), key), credentials


def config(args: argparse.Namespace) -> NodeConfig:
    if not 1 <= len(args.ae_title.strip()) <= 16:
        raise ValueError("--ae-title must be 1 to 16 characters")
    # the hops' settings first: a plaintext PACS is refused before the audit log is opened
    store = pacs.store_to(*args.store_to, calling_aet=args.ae_title, auth=args.pacs_auth,
                          tls=tls.from_arguments(args, "pacs-tls"), allow_plaintext=args.allow_plaintext_pacs)
    dicom_tls = door_tls(args)
    site_map = sites.parse(args.site, args.site_institution, parse_senders(args.sender))
    doors, credentials = doors_and_credentials(args)
    return NodeConfig(
        ae_title=args.ae_title, gateway=args.gateway, doors=doors, credentials=credentials, store=store,
        dicom_tls=dicom_tls, http_tls=tls.from_arguments(args, "http-tls"),
        gateway_tls=tls.from_arguments(args, "gateway-tls"),
        strategies=strategies(args.strategy), host=args.host, dicom_port=args.dicom_port, http_port=args.http_port,
        quiet_s=args.quiet_seconds, max_associations=args.max_associations,
        http_connections=args.http_connections, max_pdu=args.max_pdu,
        budget_bytes=int(args.memory_budget_mb * (1 << 20)), retry=Retry(args.retries + 1, args.retry_delay),
        workers=args.workers, gateway_timeout_s=args.gateway_timeout,
        sites=site_map)


def door_tls(args: argparse.Namespace) -> tls.TLSFiles | None:
    door = tls.from_arguments(args, "dicom-tls")
    if door and door.cert is None:
        raise ValueError("--dicom-tls-ca needs the node's own --dicom-tls-cert and --dicom-tls-key")
    return door


def _run(args, _):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # their INFO/DEBUG lines print headers and URLs that hold UIDs
    for chatty in ("pynetdicom", "dicomweb_client"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    node = Node(config(args)).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    door = "C-STORE over DICOM TLS" if node.config.dicom_tls else "C-STORE, plaintext"
    scheme = "https" if node.config.http_tls else "http"
    print(f"DICOM node {args.ae_title} on {args.host}:{node.dicom_port} ({door}) and "
          f"{scheme}://{args.host}:{node.http_port}/studies (STOW-RS)", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    node.stop()
    print("DICOM node stopped", flush=True)


def main(argv=None) -> int:
    return cli.main(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
