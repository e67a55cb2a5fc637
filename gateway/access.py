"""Who may ask the gateway what, what is recorded of it, and how much one subject may ask.

Every endpoint has an entry in ``ROLES``: the probes are anonymous, everything else needs a
bearer token (verified by ``components.core.identity``) carrying one of the roles listed. An app
whose routes are missing from the table does not start, so a new endpoint cannot be left open by
forgetting it. No token, or a bad one: 401 with ``WWW-Authenticate: Bearer`` and what is missing;
a valid token without the role: 403 naming the role.

Every request to an endpoint that touches an image or a result, and every refused one, is one
event of the access audit (``components.core.audit``); predictions per subject are rate-limited
(Flask-Limiter: in memory, or Redis for several replicas), 429 with ``Retry-After`` beyond.
"""
from __future__ import annotations

import hashlib
import logging
import uuid

from flask import Flask, Response, current_app, g, has_request_context, jsonify, render_template, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from components.core import audit, identity, phi
from components.core.identity import Forbidden, Identity, Unauthorized

log = logging.getLogger("gateway.access")

ANYONE_SIGNED_IN = identity.ROLES
CLINICIAN = ("clinician",)
# endpoint -> the roles that may call it (None: anonymous, the probes only)
ROLES: dict[str, tuple[str, ...] | None] = {
    "api.healthz": None, "api.readyz": None, "v2.live": None, "v2.ready": None,
    "api.list_models": CLINICIAN, "api.predict": CLINICIAN, "api.compare": CLINICIAN,
    "api.openapi_document": ANYONE_SIGNED_IN,
    "api.metrics": ("operator",),
    "api.audit_events": ("auditor",),
    "v2.server_metadata": CLINICIAN, "v2.model_metadata": CLINICIAN, "v2.model_ready": CLINICIAN,
    "v2.infer": CLINICIAN, "v2.explain": CLINICIAN, "v2.compare": CLINICIAN,
    "pages.home": ("clinician", "operator"), "pages.modality": ("clinician", "operator"),
    "pages.model": ("clinician", "operator"), "pages.cohort": CLINICIAN, "pages.results": ("clinician", "operator"),
    "pages.picture": ("clinician", "operator"), "pages.static": ANYONE_SIGNED_IN, "static": ANYONE_SIGNED_IN,
}
# what a page's POST does needs the clinician role even where its GET does not (the model page)
POSTS_NEED = {"pages.model": "clinician"}
# endpoints that touch an image or a result: each request is an audit event, whatever its outcome
AUDITED = {"api.predict": "predict", "api.compare": "compare", "v2.infer": "infer", "v2.explain": "explain",
           "v2.compare": "compare", "pages.model": "predict", "pages.cohort": "compare"}
LIMITED = ("api.predict", "api.compare", "v2.infer", "v2.explain", "v2.compare", "pages.model", "pages.cohort")


def check_table(app: Flask) -> None:
    missing = sorted({rule.endpoint for rule in app.url_map.iter_rules()} - set(ROLES))
    if missing:
        raise RuntimeError(f"endpoints with no entry in gateway.access.ROLES: {', '.join(missing)}")


def needed_role(endpoint: str | None) -> tuple[str, ...] | None:
    roles = ROLES.get(endpoint or "", ANYONE_SIGNED_IN)
    if request.method == "POST" and endpoint in POSTS_NEED:
        return (POSTS_NEED[endpoint],)
    return roles


class Access:
    """The app's identity check, audit log and rate limits (one per app)."""

    def __init__(self, verifier: identity.TokenVerifier | None, log_: audit.ChainedLog | None, phi_key: bytes,
                 limiter: Limiter, observer: str = "gateway"):
        self.verifier, self.log, self.phi_key, self.limiter, self.observer = verifier, log_, phi_key, limiter, observer

    def identify(self) -> Identity:
        if self.verifier is None:                    # --auth none: local development only
            return identity.DEVELOPER
        return self.verifier.verify(identity.bearer(request.headers.get("Authorization")))

    def note_upload(self, data: bytes, dicom) -> None:
        """The study and instance this request's image belongs to, as keyed pseudonyms."""
        if dicom is not None:
            study, instance = dicom.get("StudyInstanceUID"), dicom.get("SOPInstanceUID")
            g.audit_study = phi.pseudonym(self.phi_key, "study", str(study)) if study else None
            g.audit_instance = phi.pseudonym(self.phi_key, "instance", str(instance)) if instance else None
        else:
            g.audit_instance = phi.pseudonym(self.phi_key, "image", hashlib.sha256(data).hexdigest())

    def record(self, status: int, detail: str | None = None) -> None:
        if self.log is None:
            return
        who = g.get("identity")
        self.log.append(audit.event(
            subtype=AUDITED.get(request.endpoint or "", "access"), who=who.subject if who else "unknown",
            roles=sorted(who.roles) if who else [], verified=bool(who and who.verified),
            address=request.remote_addr, observer=self.observer, status=status, request_id=g.request_id,
            models=g.get("audit_models", ()), study=g.get("audit_study"), instance=g.get("audit_instance"),
            detail=detail))


def note_models(*answered: tuple[str, int | None]) -> None:
    """The models (and versions) that answered this request, for its audit event."""
    if has_request_context():
        g.audit_models = [*g.get("audit_models", []), *answered]


def note_upload(upload) -> None:
    if has_request_context() and "access" in current_app.extensions:
        current_app.extensions["access"].note_upload(upload.png, upload.dicom)


def _refusal(status: int, message: str, headers: dict) -> Response:
    if (request.blueprint or "pages") == "pages" and request.endpoint != "pages.static":
        body = render_template("error.html", modalities={}, cards={}, error=message)
        response = Response(body, status, mimetype="text/html")
    else:
        response = jsonify({"error": message, "status": status})
        response.status_code = status
    response.headers.update(headers)
    return response


def install(app: Flask, access: Access, rate: str) -> None:
    check_table(app)
    app.extensions["access"] = access
    for endpoint in LIMITED:
        app.view_functions[endpoint] = access.limiter.limit(rate)(app.view_functions[endpoint])

    @app.before_request
    def _authenticate():
        g.request_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        roles = needed_role(request.endpoint)
        if roles is None and request.endpoint is not None:
            return None
        try:
            g.identity = access.identify()
            if not any(g.identity.has(role) for role in roles or ANYONE_SIGNED_IN):
                raise Forbidden(" or ".join(roles or ANYONE_SIGNED_IN))
        except Unauthorized as e:
            access.record(401, str(e))
            return _refusal(401, str(e), {"WWW-Authenticate": f'Bearer realm="bcimaging", error="invalid_token", '
                                                              f'error_description="{e}"'})
        except Forbidden as e:
            access.record(403, str(e))
            return _refusal(403, str(e), {})
        return None

    access.limiter.init_app(app)          # after the identity check: its key is the verified subject

    @app.after_request
    def _record(response):
        response.headers.setdefault("X-Request-ID", g.get("request_id", ""))
        if request.endpoint in AUDITED and g.get("identity") is not None:
            access.record(response.status_code)
        if response.status_code == 429:
            app.extensions["gateway"].metrics.rate_limited.labels(request.endpoint or "unknown").inc()
        return response

    @app.errorhandler(RateLimitExceeded)
    def _limited(e):
        return _refusal(429, f"too many requests from this subject: at most {e.limit.limit} "
                             "(try again after the Retry-After seconds)", {})


def limiter(storage_uri: str) -> Limiter:
    """Per-subject limits: the verified subject (the client address before identification)."""
    return Limiter(key_func=lambda: g.identity.subject if g.get("identity") else (request.remote_addr or ""),
                   storage_uri=storage_uri, headers_enabled=True, default_limits=[], strategy="moving-window")
