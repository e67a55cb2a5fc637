"""The JSON API (programs): /api/v1/..., /healthz, /readyz, /metrics."""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from gateway import openapi, service
from gateway.app import parts
from gateway.uploads import UploadError, read_image
from serving.client import ServingRejected, ServingUnavailable

blueprint = Blueprint("api", __name__)


log = logging.getLogger(__name__)


def error(status: int, message: str):
    return jsonify({"error": message, "status": status}), status


@blueprint.errorhandler(UploadError)
def _upload_error(e: UploadError):
    parts()["metrics"].rejected.labels(str(e.status)).inc()
    return error(e.status, str(e))


@blueprint.errorhandler(ServingUnavailable)
def _unavailable(e):
    parts()["metrics"].unavailable.inc()
    log.warning("model server unavailable: %s", e)      # the address stays in the log, not the answer
    response, status = error(503, "The model server is unavailable right now; try again shortly.")
    response.headers["Retry-After"] = "5"
    return response, status


@blueprint.errorhandler(ServingRejected)
def _rejected(e: ServingRejected):
    status = 404 if e.code.name == "NOT_FOUND" else 400 if e.code.name == "INVALID_ARGUMENT" else 502
    return error(status, f"model server: {e}")


@blueprint.errorhandler(service.NotDeployed)
def _not_deployed(e):
    names = sorted(parts()["deployed"].cards())
    return error(404, f"{e}; deployed: {', '.join(names) or 'none'}")


@blueprint.errorhandler(HTTPException)
def _http(e: HTTPException):
    return error(e.code or 500, e.description if e.code != 413 else "the request is larger than the upload limit")


@blueprint.get("/api/v1/models")
def list_models():
    deployed = parts()["deployed"]
    return jsonify({"models": [{"name": name, "version": card["version"], "modality": card["modality"],
                                "backbone": card["backbone"], "strategy": card["strategy"],
                                "label_names": card["label_names"], "threshold": card["threshold"],
                                "test_metrics": card["test_metrics"]}
                               for name, card in sorted(deployed.cards().items())],
                    "cohorts": deployed.modalities(),
                    # models in the repository whose card is malformed: named, not offered
                    "skipped": [{"name": n, "reason": r} for n, r in sorted(deployed.skipped.items())]})


@blueprint.post("/api/v1/models/<name>:predict")
def predict(name):
    p = parts()
    card = p["deployed"].card(name)
    if card is None:
        raise service.NotDeployed(f"no model named {name!r} is deployed")
    png = read_image(request, p["config"].max_upload_bytes, p["config"].max_pixels)
    result = service.predict(p["client"], card, name, png)
    p["metrics"].predictions.labels(name).inc()
    return jsonify(result)


@blueprint.post("/api/v1/cohorts/<modality>/<strategy>:compare")
def compare(modality, strategy):
    p = parts()
    names = p["deployed"].cohort(modality, strategy)
    if not names:
        raise service.NotDeployed(f"no cohort {modality}/{strategy} is deployed")
    png = read_image(request, p["config"].max_upload_bytes, p["config"].max_pixels)
    result = service.compare(p["client"], p["deployed"].cards(), names, png)
    for r in result["models"]:
        p["metrics"].predictions.labels(r["model"]).inc()
    return jsonify({"modality": modality, "strategy": strategy, **result})


@blueprint.get("/api/v1/openapi.json")
def openapi_document():
    return jsonify(openapi.document())


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    p = parts()
    names = sorted(p["deployed"].cards())
    if not names:
        return error(503, "no model is deployed in the model repository")
    try:
        missing = [n for n in names if not any(state == "AVAILABLE" for _, state in p["client"].status(n))]
    except ServingUnavailable as e:
        log.warning("readiness: model server unavailable: %s", e)
        return error(503, "model server unavailable")
    except ServingRejected as e:
        log.warning("readiness: model server refused the status call: %s", e)
        return error(503, "the model server refused the status call")
    if missing:
        return error(503, f"not yet available on the model server: {', '.join(missing)}")
    return jsonify({"status": "ready", "models": len(names)})


@blueprint.get("/metrics")
def metrics():
    return generate_latest(parts()["metrics"].registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
