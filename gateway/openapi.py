"""The OpenAPI 3 document of the JSON API, served at /api/v1/openapi.json."""
from __future__ import annotations

IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string", "format": "byte"}}}}}},
    },
}
PREDICTION = {"type": "object", "properties": {
    "model": {"type": "string"}, "version": {"type": "integer"}, "probability": {"type": "number"},
    "label": {"type": "integer", "enum": [0, 1]}, "label_name": {"type": "string"},
    "threshold": {"type": "number"}}}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}


def _errors(*codes):
    text = {400: "bad image or request", 404: "unknown model or cohort", 413: "image too large",
            415: "unsupported format", 503: "model server unavailable"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "Breast-cancer imaging gateway", "version": "1.0.0",
                 "description": "Predictions from the deployed models (TensorFlow Serving over gRPC)."},
        "paths": {
            "/api/v1/models": {"get": {"summary": "Deployed models and their model cards", "responses": {
                "200": {"description": "models", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/api/v1/models/{name}:predict": {"post": {
                "summary": "Predict with one model", "requestBody": IMAGE_BODY,
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "prediction", "content": {"application/json": {"schema": PREDICTION}}},
                              **_errors(400, 404, 413, 415, 503)}}},
            "/api/v1/cohorts/{modality}/{strategy}:compare": {"post": {
                "summary": "The cohort's three backbones on one image, side by side", "requestBody": IMAGE_BODY,
                "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                               for p in ("modality", "strategy")],
                "responses": {"200": {"description": "predictions", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"models": {"type": "array", "items": PREDICTION},
                                                     "agreement": {"type": "object"}}}}}},
                              **_errors(400, 404, 413, 415, 503)}}},
            "/healthz": {"get": {"summary": "The gateway process is alive", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Every deployed model is AVAILABLE on the model server",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
        },
    }
