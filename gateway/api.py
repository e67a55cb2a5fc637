"""The JSON API (programs): /api/v1/..., /healthz, /readyz, /metrics."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import BadRequest, HTTPException

from gateway import errors, openapi, operating, service
from gateway.state import current
from serving.client import ServingUnavailable

blueprint = Blueprint("api", __name__)
DICOM = "application/dicom"


log = logging.getLogger(__name__)


def error(status: int, message: str, headers: dict | None = None):
    response = jsonify({"error": message, "status": status})
    response.headers.update(headers or {})
    return response, status


def _problem(e: Exception):
    problem = errors.describe(e)
    return error(problem.status, problem.message, problem.headers)


for _handled in errors.HANDLED:
    blueprint.register_error_handler(_handled, _problem)


@blueprint.errorhandler(HTTPException)
def _http(e: HTTPException):
    return error(e.code or 500, e.description if e.code != 413 else "the request is larger than the upload limit")


@blueprint.get("/api/v1/models")
def list_models():
    deployed = current().deployed
    return jsonify({"models": [{"name": name, "version": card["version"], "labels": card["labels"],
                                "modality": card["modality"],
                                "backbone": card["backbone"], "strategy": card["strategy"],
                                "label_names": card["label_names"], "threshold": card["threshold"],
                                "test_metrics": card["test_metrics"]}
                               for name, card in sorted(deployed.cards().items())],
                    "cohorts": deployed.modalities(),
                    # models in the repository whose card is malformed: named, not offered
                    "skipped": [{"name": n, "reason": r} for n, r in sorted(deployed.skipped.items())]})


@blueprint.post("/api/v1/models/<name>:predict")
def predict(name):
    p = current()
    card = p.deployed.card(name)
    if card is None:
        raise errors.NotDeployed(f"no model named {name!r} is deployed")
    site = operating.resolve(p.deployed, request.args.get("site"))     # before the image is read
    upload = p.read_upload(request, card["image_size"], card["modality"])
    result = service.predict(p, name, upload, site)
    p.metrics.predictions.labels(name).inc()
    if _wants_dicom():
        return _dicom(service.dicom_report(p.deployed, upload, [result]))
    return jsonify(result)


@blueprint.post("/api/v1/cohorts/<modality>/<strategy>:compare")
def compare(modality, strategy):
    p = current()
    names = p.deployed.cohort(modality, strategy)
    if not names:
        raise errors.NotDeployed(f"no cohort {modality}/{strategy} is deployed")
    site = operating.resolve(p.deployed, request.args.get("site"))
    upload = p.read_upload(request, max(p.deployed.card(n)["image_size"] for n in names), modality)
    result = service.compare(p, names, upload, site)
    for r in result["models"]:
        p.metrics.predictions.labels(r["model"]).inc()
    if _wants_dicom():
        return _dicom(service.dicom_report(p.deployed, upload, result["models"], result["ensemble"]))
    return jsonify({"modality": modality, "strategy": strategy, **result})


def _wants_dicom() -> bool:
    """``Accept: application/dicom`` preferred over JSON (``*/*`` and no Accept mean JSON)."""
    return request.accept_mimetypes.best_match(["application/json", DICOM]) == DICOM


def _dicom(body: bytes) -> Response:
    return Response(body, mimetype=DICOM, headers={"Content-Disposition": 'attachment; filename="report.dcm"'})


@blueprint.get("/api/v1/openapi.json")
def openapi_document():
    return jsonify(openapi.document())


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    p = current()
    try:
        reason = service.not_ready(p)
    except ServingUnavailable as e:
        log.warning("readiness: model server unavailable: %s", e)
        reason = "model server unavailable"
    if reason:
        return error(503, reason, {"Retry-After": str(errors.RETRY_AFTER_S)})
    return jsonify({"status": "ready", "models": len(p.deployed.cards())})


@blueprint.get("/api/v1/audit")
def audit_events():
    """This replica's access audit for a time window (``since``, ``until``: ISO 8601 with a zone;
    at most ``limit`` events, the newest last), for an auditor."""
    import datetime

    from components.core import audit

    def when(name: str):
        value = request.args.get(name)
        if value is None:
            return None
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"{name} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise BadRequest(f"{name} needs a time zone, e.g. 2026-12-07T09:00:00+00:00")
        return parsed

    since, until = when("since"), when("until")
    limit = request.args.get("limit", "1000")
    if not limit.isdigit() or not 1 <= int(limit) <= 10000:
        raise BadRequest("limit is a whole number from 1 to 10000")
    chained = current_app.extensions["access"].log
    if chained is None:
        return jsonify({"events": [], "note": "this gateway keeps no access audit"})
    chained.sync()
    events = list(audit.read(chained.path, since, until))[-int(limit):]
    return jsonify({"events": events, "file": chained.path.name, "verified": audit.verify(chained.path).ok})


@blueprint.get("/metrics")
def metrics():
    return generate_latest(current().metrics.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
