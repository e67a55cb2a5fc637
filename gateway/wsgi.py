"""The gateway as a WSGI application (`gateway.wsgi:app`) for any WSGI server, configured from the
environment (a container's configuration: MODEL_REPO, SERVING_ADDRESS, OIDC_ISSUER, OIDC_AUDIENCE,
AUDIT_LOG, BCIMAGING_PHI_KEY_FILE, ...; `python -m gateway --help` lists them); `python -m gateway`
serves the same app on waitress."""
from gateway.__main__ import build_parser, config_from
from gateway.app import create_app

_args = build_parser().parse_args([])
if _args.auth == "none":
    raise RuntimeError("GATEWAY_AUTH=none is for `python -m gateway` on loopback only: a WSGI server may listen "
                       "anywhere")
app = create_app(config_from(_args))
