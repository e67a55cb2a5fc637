"""The OpenAPI 3 document of every JSON operation (/api/v1, the probes, Open Inference Protocol
v2), served at /api/v1/openapi.json, with the exact schemas of what each one answers. The test
suite fuzzes the running gateway against it with Schemathesis.

An image is a PNG, JPEG or BMP file or a DICOM Part 10 image (multipart, JSON base64, a raw
``application/dicom`` body, or an OIP BYTES element). A DICOM file that is sound but not an image
the model reads (a Structured Report, another SOP class, another modality's image) is 422
Unprocessable Content: the format is supported (not 415), the content is not an image for it."""
from __future__ import annotations

STRING = {"type": "string"}
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string", "format": "byte"}}}}}},
        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    },
    "description": "The image file: PNG, JPEG, BMP, or a DICOM Part 10 image (Digital Mammography X-Ray or "
                   "Ultrasound; the model's modality) in any field, or as the whole application/dicom body.",
}
OPERATING_POINT = {
    "type": "object", "additionalProperties": False,
    "required": ["site", "version", "temperature", "threshold", "acceptance_sha256", "reason"],
    "description": "The operating point the answer used: a site's accepted profile (for the version that answered), "
                   "or the model's own (site null, temperature 1), with the reason.",
    "properties": {"site": {"type": "string", "nullable": True}, "version": {"type": "integer", "nullable": True},
                   "temperature": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                   "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                   "acceptance_sha256": {"type": "string", "nullable": True, "pattern": "^[0-9a-f]{64}$"},
                   "reason": STRING}}
SITE_PARAMETER = {"name": "site", "in": "query", "required": False,
                  "description": "A site whose accepted operating point (temperature and threshold) the answer uses "
                                 "where one is in effect for the version that answers; without it, the model's own. "
                                 "A site the repository does not know is a 400 naming the known ones.",
                  "schema": {"type": "string", "pattern": "^[a-z0-9-]{1,32}$"}}
PREDICTION = {"type": "object", "additionalProperties": False,
              "required": ["model", "version", "version_label", "probability", "label", "label_name", "threshold",
                           "operating_point"],
              "properties": {"model": STRING, "version": {"type": "integer"},
                             "version_label": {"type": "string", "nullable": True, "enum": ["stable", "canary", None]},
                             "probability": {"type": "number", "minimum": 0, "maximum": 1},
                             "label": {"type": "integer", "enum": [0, 1]}, "label_name": STRING,
                             "threshold": {"type": "number"}, "operating_point": OPERATING_POINT}}
MODEL_ERROR = {"type": "object", "additionalProperties": False, "required": ["model", "error"],
               "properties": {"model": STRING, "error": STRING}}
ENSEMBLE = {"oneOf": [
    {"type": "object", "additionalProperties": False,
     "required": ["available", "model", "members", "probability", "label", "label_name", "threshold", "combination",
                  "operating_point"],
     "properties": {"available": {"type": "boolean", "enum": [True]}, "model": STRING,
                    "members": {"type": "array", "items": STRING},
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                    "label": {"type": "integer", "enum": [0, 1]}, "label_name": STRING, "threshold": {"type": "number"},
                    "combination": STRING, "operating_point": OPERATING_POINT}},
    {"type": "object", "additionalProperties": False, "required": ["available", "reason"],
     "properties": {"available": {"type": "boolean", "enum": [False]}, "reason": STRING}}]}
COMPARISON = {"type": "object", "additionalProperties": False,
              "required": ["modality", "strategy", "models", "agreement", "ensemble"],
              "properties": {"modality": STRING, "strategy": STRING, "ensemble": ENSEMBLE,
                             "models": {"type": "array", "items": {"oneOf": [PREDICTION, MODEL_ERROR]}},
                             "agreement": {"type": "object", "additionalProperties": False,
                                           "required": ["agreeing", "of", "unanimous"],
                                           "properties": {"agreeing": {"type": "integer"}, "of": {"type": "integer"},
                                                          "unanimous": {"type": "boolean"}}}}}
METRIC = {"type": "object", "properties": {"value": {"type": "number", "nullable": True},
                                           "ci_low": {"type": "number", "nullable": True},
                                           "ci_high": {"type": "number", "nullable": True}}}
MODELS = {"type": "object", "additionalProperties": False, "required": ["models", "cohorts", "skipped"], "properties": {
    "models": {"type": "array", "items": {"type": "object", "required": [
        "name", "version", "modality", "backbone", "strategy", "label_names", "threshold", "test_metrics"], "properties": {
        "name": STRING, "version": {"type": "integer"}, "modality": STRING, "backbone": STRING, "strategy": STRING,
        "label_names": {"type": "array", "items": STRING, "minItems": 2, "maxItems": 2},
        "threshold": {"type": "number"}, "test_metrics": {"type": "object", "additionalProperties": METRIC}}}},
    "cohorts": {"type": "object", "additionalProperties": {
        "type": "object", "additionalProperties": {"type": "array", "items": STRING}}},
    "skipped": {"type": "array", "items": {"type": "object", "required": ["name", "reason"],
                                           "properties": {"name": STRING, "reason": STRING}}}}}
V1_ERROR = {"type": "object", "additionalProperties": False, "required": ["error", "status"],
            "properties": {"error": STRING, "status": {"type": "integer"}}}
V2_ERROR = {"type": "object", "additionalProperties": False, "required": ["error"], "properties": {"error": STRING}}

TENSOR_IN = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": STRING, "datatype": STRING, "shape": {"type": "array", "items": {"type": "integer"}},
    "parameters": {"type": "object"}, "data": {"type": "array", "items": STRING}}}
INFER_REQUEST = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": STRING, "parameters": {"type": "object", "properties": {"site": SITE_PARAMETER["schema"]}},
        "inputs": {"type": "array", "items": TENSOR_IN, "minItems": 1, "maxItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": STRING, "parameters": {"type": "object"}}}}}}}},
    "description": "An OIP inference request; the input image_bytes is BYTES, shape [n], each element an "
                   "image file (PNG, JPEG, BMP or DICOM Part 10), its data base64 strings; parameters.site asks for "
                   "a site's accepted operating point (named in the response's operating_point_* parameters). With the binary "
                   "tensor data extension the body is the JSON header followed by the raw tensors (header "
                   "length in Inference-Header-Content-Length)."}
TENSOR_OUT = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": STRING, "datatype": {"type": "string", "enum": ["FP32", "INT64", "BYTES"]},
    "shape": {"type": "array", "items": {"type": "integer"}}, "parameters": {"type": "object"},
    "data": {"type": "array", "items": {"oneOf": [{"type": "number"}, STRING]}}}}
INFER_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": STRING, "model_version": STRING, "id": STRING, "parameters": {"type": "object"},
    "outputs": {"type": "array", "items": TENSOR_OUT}}}
MODEL_METADATA = {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"], "properties": {
    "name": STRING, "versions": {"type": "array", "items": STRING}, "platform": STRING,
    "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}}}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(schema: dict, *codes) -> dict:
    text = {400: "bad image or request, or an unknown site", 404: "unknown model, version or cohort", 413: "image too large",
            415: "unsupported format", 422: "a DICOM file that is not an image this model reads (e.g. a "
                                            "Structured Report, or another modality's image)",
            502: "the model server refused the request",
            503: "model server unavailable or busy (Retry-After)"}
    return {str(c): _json(schema, text[c]) for c in codes}


def _path(*names: str, integer: tuple[str, ...] = ()) -> list[dict]:
    return [{"name": n, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[0-9]+$"} if n in integer else {"type": "string", "minLength": 1}}
            for n in names]


def _v2_model_operations(suffix: str, method: str, operation: dict) -> dict:
    """The same operation on /v2/models/{name}... and /v2/models/{name}/versions/{version}..."""
    return {f"/v2/models/{{name}}{suffix}": {method: {**operation, "parameters": _path("name")}},
            f"/v2/models/{{name}}/versions/{{version}}{suffix}": {
                method: {**operation, "parameters": _path("name", "version", integer=("version",))}}}


def _endpoint(path: str) -> str:
    """The gateway endpoint (gateway.access.ROLES) that serves ``path``."""
    fixed = {"/api/v1/models": "api.list_models", "/api/v1/openapi.json": "api.openapi_document",
             "/api/v1/audit": "api.audit_events", "/healthz": "api.healthz", "/readyz": "api.readyz",
             "/metrics": "api.metrics", "/v2": "v2.server_metadata", "/v2/health/live": "v2.live",
             "/v2/health/ready": "v2.ready"}
    if path in fixed:
        return fixed[path]
    for suffix, endpoint in ((":predict", "api.predict"), (":compare", "api.compare"), ("/ready", "v2.model_ready"),
                             ("/explain", "v2.explain")):
        if path.endswith(suffix):
            return endpoint
    if path.startswith("/v2/cohorts/"):
        return "v2.compare"
    return "v2.infer" if path.endswith("/infer") else "v2.model_metadata"


def _secured(paths: dict) -> dict:
    """Each operation with its security: the probes anonymous, every other one a bearer token with
    one of its roles (``x-roles``), 401 and 403 described, 429 where a subject's rate applies."""
    from gateway import access

    refusal = {"type": "object", "required": ["error"], "properties": {"error": STRING, "status": {"type": "integer"}}}
    for path, operations in paths.items():
        endpoint = _endpoint(path)
        roles = access.ROLES[endpoint]
        for operation in operations.values():
            if roles is None:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": []}]
            operation["x-roles"] = list(roles)
            operation["responses"]["401"] = _json(refusal, "no bearer token, or one that is expired, forged, "
                                                           "for another audience or from another issuer")
            operation["responses"]["403"] = _json(refusal, f"the token carries none of the roles {', '.join(roles)}")
            if endpoint in access.LIMITED:
                operation["responses"]["429"] = _json(refusal, "this subject's rate limit (Retry-After)")
    return paths


def document() -> dict:
    predict_errors = _errors(V1_ERROR, 400, 404, 413, 415, 422, 502, 503)
    infer = {"requestBody": INFER_REQUEST, "responses": {
        "200": _json(INFER_RESPONSE, "inference response"), **_errors(V2_ERROR, 400, 404, 413, 415, 422, 502, 503)}}
    return {
        "openapi": "3.0.3",
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An access token from the hospital's OpenID Connect provider (RS256 or ES256), for this "
                           "gateway's audience; its roles (clinician, operator, auditor) say what it may do."}}},
        "security": [{"bearer": []}],
        "info": {"title": "Breast-cancer imaging gateway", "version": "1.0.0",
                 "description": "Predictions from the deployed models (TensorFlow Serving over gRPC): the "
                                "gateway's own API (/api/v1) and KServe's Open Inference Protocol v2 (/v2)."},
        "paths": _secured({
            "/api/v1/audit": {"get": {
                "summary": "This replica's access audit for a time window (hash-chained; verified on reading)",
                "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string",
                                                                                       "format": "date-time"}}
                               for n in ("since", "until")] + [
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}],
                "responses": {"200": _json({"type": "object", "required": ["events"], "properties": {
                    "events": {"type": "array", "items": {"type": "object"}}, "file": STRING,
                    "verified": {"type": "boolean"}, "note": STRING}}, "audit events"),
                    **_errors(V1_ERROR, 400)}}},
            "/api/v1/models": {"get": {"summary": "Deployed models and their model cards",
                                       "responses": {"200": _json(MODELS, "models")}}},
            "/api/v1/models/{name}:predict": {"post": {
                "summary": "Predict with one model", "requestBody": IMAGE_BODY,
                "parameters": _path("name") + [SITE_PARAMETER],
                "responses": {"200": _json(PREDICTION, "prediction"), **predict_errors}}},
            "/api/v1/cohorts/{modality}/{strategy}:compare": {"post": {
                "summary": "The cohort's three backbones on one image, side by side", "requestBody": IMAGE_BODY,
                "parameters": _path("modality", "strategy") + [SITE_PARAMETER],
                "responses": {"200": _json(COMPARISON, "predictions"), **predict_errors}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document",
                                             "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
            "/healthz": {"get": {"summary": "The gateway process is alive", "responses": {"200": _json(
                {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}},
                "alive")}}},
            "/readyz": {"get": {"summary": "Every deployed model is AVAILABLE on the model server", "responses": {
                "200": _json({"type": "object", "required": ["status", "models"], "properties": {
                    "status": {"type": "string", "enum": ["ready"]}, "models": {"type": "integer"}}}, "ready"),
                **_errors(V1_ERROR, 503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {"schema": STRING}}}}}},
            "/v2": {"get": {"summary": "OIP server metadata", "responses": {"200": _json(
                {"type": "object", "required": ["name", "version", "extensions"], "properties": {
                    "name": STRING, "version": STRING, "extensions": {"type": "array", "items": STRING}}},
                "server metadata")}}},
            "/v2/health/live": {"get": {"summary": "OIP server live", "responses": {"200": _json(
                {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}, "live")}}},
            "/v2/health/ready": {"get": {"summary": "OIP server ready: every deployed model is AVAILABLE", "responses": {
                "200": _json({"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
                             "ready"),
                "503": _json({"type": "object", "required": ["ready", "error"], "properties": {
                    "ready": {"type": "boolean"}, "error": STRING}}, "not ready")}}},
            **_v2_model_operations("", "get", {"summary": "OIP model metadata", "responses": {
                "200": _json(MODEL_METADATA, "model metadata"), **_errors(V2_ERROR, 404)}}),
            **_v2_model_operations("/ready", "get", {"summary": "OIP model ready", "responses": {
                "200": _json({"type": "object", "required": ["name", "ready"], "properties": {
                    "name": STRING, "ready": {"type": "boolean"}}}, "ready"),
                "400": _json({"type": "object", "required": ["name", "ready"], "properties": {
                    "name": STRING, "ready": {"type": "boolean"}}}, "not ready (the spec: a 4xx means false)"),
                **_errors(V2_ERROR, 404)}}),
            **_v2_model_operations("/infer", "post", {"summary": "OIP inference", **infer}),
            **_v2_model_operations("/explain", "post", {"summary": "Extension bcimaging_explain: Grad-CAM heatmap",
                                                        **infer}),
            "/v2/cohorts/{modality}/{strategy}/infer": {"post": {
                "summary": "Extension bcimaging_compare: the cohort's models on one image, and their ensemble "
                           "(outputs ensemble_probability, ensemble_label, ensemble_threshold when it is available)",
                "parameters": _path("modality", "strategy"), **infer}},
        }),
    }
