"""KServe's Open Inference Protocol v2 (OIP) on the gateway, beside /api/v1, so that the
clients of KServe, Triton and Seldon MLServer (e.g. ``tritonclient.http``) work unchanged:

    GET  /v2                                      server metadata (name, version, extensions)
    GET  /v2/health/live | /v2/health/ready       ready: 503 until every deployed model is AVAILABLE
    GET  /v2/models/<m>[/versions/<v>]            model metadata
    GET  /v2/models/<m>[/versions/<v>]/ready      200, or 400 while not ready (the spec's 4xx)
    POST /v2/models/<m>[/versions/<v>]/infer      input image_bytes (BYTES, shape [n]) -> probability
                                                  (FP32), label (INT64), threshold (FP32)

Each BYTES element is an image file: PNG, JPEG, BMP or a DICOM Part 10 image (gateway.uploads).
``"parameters": {"site": "<site>"}`` asks for a site's operating point (gateway.operating);
``infer`` names the point it used in scalar response parameters (``operating_point_site``,
``_version``, ``_temperature``, ``_threshold``, ``_acceptance_sha256``, ``_reason``; nulls left
out), a cohort's ``infer`` in an ``operating_point`` BYTES output (one JSON object per model).

Tensor data travel as JSON (BYTES elements base64-encoded) or, with the binary tensor data
extension, as raw bytes after the JSON header (``Inference-Header-Content-Length``). Two more
extensions, advertised in the server metadata: ``bcimaging_explain``
(``POST /v2/models/<m>[/versions/<v>]/explain``: the Grad-CAM ``heatmap`` FP32 [n, h, w]) and
``bcimaging_compare`` (``POST /v2/cohorts/<modality>/<strategy>/infer``: the cohort's models on
one image; outputs ``model`` BYTES, ``probability``, ``label``, ``threshold``, one row per model).
A third, ``bcimaging_dicom_sr``: asked for by name (``"outputs": [{"name": "dicom_sr"}]``) on
``infer`` or a cohort's ``infer`` of one DICOM image, the output ``dicom_sr`` (BYTES, shape [1])
is the TID 1500 SR of the answer, as ``Accept: application/dicom`` gives it on /api/v1 (base64
in JSON, like the inputs; raw with ``binary_data``).
Errors are ``{"error": "..."}``, with the status codes of /api/v1 (gateway.errors)."""
from __future__ import annotations

import base64
import binascii
import json
import struct

import numpy as np
from flask import Blueprint, Response, request

from gateway import errors, operating, service
from gateway.state import current
from serving.client import ServingRejected, ServingUnavailable

blueprint = Blueprint("v2", __name__, url_prefix="/v2")
SERVER = {"name": "bcimaging-gateway", "version": "1.0.0",
          "extensions": ["binary_tensor_data", "bcimaging_explain", "bcimaging_compare", "bcimaging_dicom_sr"]}
INPUT = "image_bytes"
OUTPUTS = {"probability": "FP32", "label": "INT64", "threshold": "FP32"}
NUMPY = {"FP32": np.float32, "INT64": np.int64, "BYTES": object}
MAX_BATCH = 16
HEADER_LENGTH = "Inference-Header-Content-Length"
SR_OUTPUT = "dicom_sr"          # the bcimaging_dicom_sr extension's output (base64 in JSON)


class BadRequest(Exception):
    """The request does not follow the protocol; ``str(e)`` says how."""


def _answer(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status, headers=headers, mimetype="application/json")


@blueprint.errorhandler(BadRequest)
def _bad_request(e):
    return _answer({"error": str(e)}, 400)


def _problem(e: Exception):
    problem = errors.describe(e)
    return _answer({"error": problem.message}, problem.status, problem.headers)


for _handled in errors.HANDLED:
    blueprint.register_error_handler(_handled, _problem)


@blueprint.get("")
def server_metadata():
    return _answer(SERVER)


@blueprint.get("/health/live")
def live():
    return _answer({"live": True})


@blueprint.get("/health/ready")
def ready():
    try:
        reason = service.not_ready(current())
    except ServingUnavailable:
        reason = "model server unavailable"
    if reason:
        return _answer({"ready": False, "error": reason}, 503, {"Retry-After": str(errors.RETRY_AFTER_S)})
    return _answer({"ready": True})


def _card(name: str) -> dict:
    card = current().deployed.card(name)
    if card is None:
        raise errors.NotDeployed(f"no model named {name!r} is deployed")
    return card


def _available(name: str) -> list[int]:
    try:
        return sorted(v for v, state in current().client.status(name) if state == "AVAILABLE")
    except ServingRejected:
        return []


def _check_version(name: str, version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit() or int(version) not in _available(name):
        raise errors.NotDeployed(f"version {version!r} of {name!r} is not available")
    return int(version)


@blueprint.get("/models/<name>")
@blueprint.get("/models/<name>/versions/<version>")
def model_metadata(name, version=None):
    _card(name)
    _check_version(name, version)
    return _answer({"name": name, "versions": [str(v) for v in _available(name)],
                    "platform": "tensorflow_savedmodel",
                    "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": k, "datatype": t, "shape": [-1]} for k, t in OUTPUTS.items()]})


@blueprint.get("/models/<name>/ready")
@blueprint.get("/models/<name>/versions/<version>/ready")
def model_ready(name, version=None):
    _card(name)
    available = _available(name)
    ok = bool(available) if version is None else version.isdigit() and int(version) in available
    return _answer({"name": name, "ready": ok}, 200 if ok else 400)      # the spec: 4xx means "not ready"


def _read_request() -> tuple[dict, bytes]:
    """(JSON header, binary part) of an infer request, with or without binary tensor data."""
    body = request.get_data(cache=False)
    length = request.headers.get(HEADER_LENGTH)
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} must be the length of the JSON header ({len(body)} bytes sent)")
        header, binary = body[:int(length)], body[int(length):]
    else:
        header, binary = body, b""
    parsed = current().read_json(header)
    if not isinstance(parsed, dict):
        raise BadRequest("the request must be a JSON object")
    return parsed, binary


def _bytes_elements(tensor: dict, binary: bytes, offset: int) -> tuple[list[bytes], int]:
    """The BYTES elements of the input tensor, and the binary offset after it."""
    if not isinstance(tensor, dict) or tensor.get("name") != INPUT:
        raise BadRequest(f"the model takes one input, {INPUT!r}")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"input {INPUT!r} must have datatype BYTES (the image file's bytes)")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and 1 <= shape[0] <= MAX_BATCH):
        raise BadRequest(f"input {INPUT!r} must have shape [n] with 1 <= n <= {MAX_BATCH}")
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest("binary_data_size does not match the binary data sent")
        raw, elements, i = binary[offset:offset + size], [], 0
        while i < len(raw):                    # each element: uint32 little-endian length, then bytes
            if i + 4 > len(raw):
                raise BadRequest("truncated BYTES element in the binary data")
            (n,) = struct.unpack_from("<I", raw, i)
            if i + 4 + n > len(raw):
                raise BadRequest("truncated BYTES element in the binary data")
            elements.append(raw[i + 4:i + 4 + n])
            i += 4 + n
            if len(elements) > shape[0]:       # stop early: never build more than the shape says
                break
        offset += size
    else:
        data = tensor.get("data")
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise BadRequest(f"input {INPUT!r} needs data: a list of base64 strings, one per image")
        try:
            elements = [base64.b64decode(d, validate=True) for d in data]
        except (binascii.Error, ValueError):
            raise BadRequest("BYTES data must be base64 strings") from None
    if len(elements) != shape[0]:
        raise BadRequest(f"shape {shape} does not match the {len(elements)} element(s) sent")
    return elements, offset


def _images(parsed: dict, binary: bytes, model_size: int, modality: str) -> list:
    """The request's images (any accepted format, DICOM included) as gateway.uploads.Upload
    (PNG for the model server, statistics)."""
    inputs = parsed.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequest(f"inputs must be a list with the one input {INPUT!r}")
    elements, _ = _bytes_elements(inputs[0], binary, 0)
    state = current()
    return [state.prepare_image(e, model_size, modality) for e in elements]


def _respond(parsed: dict, name: str, version: str | None, outputs: dict[str, tuple[str, np.ndarray]],
             parameters: dict | None = None) -> Response:
    """The inference response, each output as JSON data or binary as the request asked."""
    requested = parsed.get("outputs")
    if requested is not None and (not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested)):
        raise BadRequest("outputs must be a list of objects with a name")
    wanted = {o.get("name"): o.get("parameters") or {} for o in requested} if requested else {k: {} for k in outputs}
    unknown = [n for n in wanted if n not in outputs]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; the outputs are {list(outputs)}")
    request_parameters = parsed.get("parameters") if isinstance(parsed.get("parameters"), dict) else {}
    binary_default = bool(request_parameters.get("binary_data_output", False))
    tensors, blobs = [], []
    for out_name, out_parameters in wanted.items():
        datatype, array = outputs[out_name]
        tensor = {"name": out_name, "datatype": datatype, "shape": list(array.shape)}
        flag = out_parameters.get("binary_data", binary_default) if isinstance(out_parameters, dict) else binary_default
        if flag:
            raw = (b"".join(struct.pack("<I", len(v)) + v for v in array.ravel()) if datatype == "BYTES"
                   else np.ascontiguousarray(array, dtype=NUMPY[datatype]).tobytes())
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = ([base64.b64encode(v).decode() for v in array.ravel()] if out_name == SR_OUTPUT
                              else [v.decode() for v in array.ravel()] if datatype == "BYTES"
                              else array.astype(NUMPY[datatype]).ravel().tolist())
        tensors.append(tensor)
    body = {"model_name": name, "outputs": tensors}
    if version is not None:
        body["model_version"] = version
    if isinstance(parsed.get("id"), str):
        body["id"] = parsed["id"]
    if parameters:
        body["parameters"] = parameters
    header = json.dumps(body).encode()
    if not blobs:
        return Response(header, 200, mimetype="application/json")
    return Response(header + b"".join(blobs), 200, mimetype="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def _wants_sr(parsed: dict) -> bool:
    requested = parsed.get("outputs")
    return isinstance(requested, list) and any(isinstance(o, dict) and o.get("name") == SR_OUTPUT for o in requested)


def _sr_output(images: list, answers: list[dict], ensemble: dict | None = None) -> tuple[str, np.ndarray]:
    """The ``dicom_sr`` output: the SR of one DICOM image's answers (gateway.service.dicom_report)."""
    if len(images) != 1:
        raise BadRequest(f"{SR_OUTPUT} reports on one image (shape [1])")
    report = service.dicom_report(current().deployed, images[0], answers, ensemble)
    return "BYTES", np.array([report], dtype=object)


def _site(parsed: dict) -> str | None:
    """The site the request asks for (``"parameters": {"site": ...}``), checked."""
    parameters = parsed.get("parameters")
    site = parameters.get("site") if isinstance(parameters, dict) else None
    if site is not None and not isinstance(site, str):
        raise BadRequest("the site parameter must be a string, a site's name")
    return operating.resolve(current().deployed, site)


def _at_site(name: str, prediction, site: str | None) -> tuple[dict, dict]:
    """(the operating point, the outputs at it) of one model's answer on every image."""
    outputs = prediction.outputs
    point = operating.point(current().deployed, name, prediction.version, site, float(outputs["threshold"][0]))
    rows = [operating.apply(point, float(p), int(label)) for p, label in zip(outputs["probability"], outputs["label"])]
    return point, {"probability": np.array([r[0] for r in rows], np.float32),
                   "label": np.array([r[1] for r in rows], np.int64),
                   "threshold": np.full(len(rows), point["threshold"], np.float32)}


def _predict(name: str, version: str | None, signature: str = "serving_default"):
    """(parsed request, Prediction) of one model on the request's images."""
    card = _card(name)
    parsed, binary = _read_request()
    if signature == "serving_default":
        _site(parsed)                # an unknown site is refused before any image is read
    images = _images(parsed, binary, card["image_size"], card["modality"])
    state = current()
    prediction, label = service.route(state, name, [u.png for u in images], signature, _check_version(name, version))
    state.deployed.note_served(name, prediction.version)
    state.metrics.predictions.labels(name).inc(len(images))
    if signature == "serving_default":
        for u, p in zip(images, prediction.outputs["probability"]):
            state.metrics.observe(name, prediction.version, label, float(p), u.stats)
    return parsed, prediction, images


@blueprint.post("/models/<name>/infer")
@blueprint.post("/models/<name>/versions/<version>/infer")
def infer(name, version=None):
    parsed, prediction, images = _predict(name, version)
    point, answered = _at_site(name, prediction, _site(parsed))
    outputs = {k: (t, answered[k]) for k, t in OUTPUTS.items()}
    if _wants_sr(parsed):
        answer = {"model": name, "version": prediction.version, "probability": float(answered["probability"][0]),
                  "threshold": point["threshold"], "label": int(answered["label"][0]), "operating_point": point}
        outputs[SR_OUTPUT] = _sr_output(images, [answer])
    return _respond(parsed, name, str(prediction.version), outputs, operating.parameters(point))


@blueprint.post("/models/<name>/explain")
@blueprint.post("/models/<name>/versions/<version>/explain")
def explain(name, version=None):
    parsed, prediction, _ = _predict(name, version, signature="explain")
    return _respond(parsed, name, str(prediction.version), {"heatmap": ("FP32", prediction.outputs["heatmap"])})


@blueprint.post("/cohorts/<modality>/<strategy>/infer")
def compare(modality, strategy):
    state = current()
    names = state.deployed.cohort(modality, strategy)
    if not names:
        raise errors.NotDeployed(f"no cohort {modality}/{strategy} is deployed")
    parsed, binary = _read_request()
    site = _site(parsed)
    images = _images(parsed, binary, max(state.deployed.card(n)["image_size"] for n in names), modality)
    if len(images) != 1:
        raise BadRequest("a compare takes one image (shape [1])")
    result = service.compare(state, names, images[0], site)
    answered = [r for r in result["models"] if "error" not in r]
    outputs = {"model": ("BYTES", np.array([r["model"].encode() for r in answered], dtype=object)),
               "probability": ("FP32", np.array([r["probability"] for r in answered], np.float32)),
               "label": ("INT64", np.array([r["label"] for r in answered], np.int64)),
               "threshold": ("FP32", np.array([r["threshold"] for r in answered], np.float32)),
               "operating_point": ("BYTES", np.array([json.dumps(r["operating_point"]).encode() for r in answered],
                                                     dtype=object))}
    ensemble = result["ensemble"]
    parameters = {"agreeing": result["agreement"]["agreeing"], "of": result["agreement"]["of"],
                  "unanimous": result["agreement"]["unanimous"], **({"site": site} if site else {})}
    if ensemble["available"]:
        outputs.update(ensemble_probability=("FP32", np.array([ensemble["probability"]], np.float32)),
                       ensemble_label=("INT64", np.array([ensemble["label"]], np.int64)),
                       ensemble_threshold=("FP32", np.array([ensemble["threshold"]], np.float32)))
        parameters["ensemble"] = ensemble["model"]
    else:
        parameters["ensemble_unavailable"] = ensemble["reason"]
    if _wants_sr(parsed):
        outputs[SR_OUTPUT] = _sr_output(images, result["models"], ensemble)
    return _respond(parsed, f"{modality}/{strategy}", None, outputs, parameters)
