"""TensorFlow Serving's REST API on the embedded model server (``--rest-port``, as
``tensorflow_model_server --rest_api_port``), over the same ModelStore as its gRPC API:

    GET  /v1/models/<m>[/versions/<v>|/labels/<l>]             model status
    GET  /v1/models/<m>[/versions/<v>|/labels/<l>]/metadata    signature defs
    POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict     {"instances": ...} or {"inputs": ...}

as TF Serving documents it (tensorflow_serving/g3doc/api_rest.md): row format answers
``predictions``, columnar ``outputs``; binary strings travel as ``{"b64": ...}`` (and outputs
whose name ends in ``_bytes`` are encoded so); errors are ``{"error": "..."}`` with the HTTP
status of the gRPC code. The same requests work against the ``tensorflow/serving`` image on
port 8501.
"""
from __future__ import annotations

import base64
import binascii
import json

import grpc
import numpy as np
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
               grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}
MAX_BODY = 64 << 20           # as the gRPC port's message limit

_PREFIXES = ["/v1/models/<name>", "/v1/models/<name>/versions/<int:version>", "/v1/models/<name>/labels/<label>"]
ROUTES = Map([Rule(p, endpoint="status", methods=["GET"]) for p in _PREFIXES]
             + [Rule(p + "/metadata", endpoint="metadata", methods=["GET"]) for p in _PREFIXES]
             + [Rule(p + ":predict", endpoint="predict", methods=["POST"]) for p in _PREFIXES])


class RestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _spec(name: str, version: int | None = None, label: str | None = None, signature: str = ""):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec


def _decode(value):
    """JSON values -> numpy-ready values: {"b64": ...} becomes bytes, strings become UTF-8 bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, 'a binary value must be {"b64": "<base64>"}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, "b64 value is not valid base64") from None
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    return value


def _tensor(value) -> np.ndarray:
    decoded = _decode(value)
    array = np.array(decoded, dtype=object if _has_bytes(decoded) else None)
    if array.dtype == object and not _has_bytes(decoded):
        raise RestError(grpc.StatusCode.INVALID_ARGUMENT, "tensor values must form a regular (non-ragged) list")
    return array


def _has_bytes(value) -> bool:
    return isinstance(value, bytes) or (isinstance(value, list) and any(_has_bytes(v) for v in value))


def _encode(name: str, array: np.ndarray):
    """numpy -> JSON values; strings as text, or {"b64": ...} for outputs named *_bytes."""
    def one(v):
        if isinstance(v, bytes):
            return {"b64": base64.b64encode(v).decode()} if name.endswith("_bytes") else v.decode("utf-8", "replace")
        return v
    values = array.tolist()
    if array.dtype == object or array.dtype.kind == "S":
        return json.loads(json.dumps(values, default=one))
    return values


def _inputs(body: dict, signature_inputs: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """(named input arrays, row format?) from a predict body."""
    if ("instances" in body) == ("inputs" in body):
        raise RestError(grpc.StatusCode.INVALID_ARGUMENT,
                        "Missing 'inputs' or 'instances' key" if "instances" not in body else
                        "Request body must have either 'inputs' or 'instances', not both")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, "'instances' must be a list")
        if rows and all(isinstance(r, dict) and "b64" not in r for r in rows):
            missing = [k for k in signature_inputs if any(k not in r for r in rows)]
            if missing:
                raise RestError(grpc.StatusCode.INVALID_ARGUMENT, f"instances lack the input(s) {missing}")
            return {k: _tensor([r[k] for r in rows]) for k in signature_inputs}, True
        if len(signature_inputs) != 1:
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the signature has inputs {signature_inputs}: give each instance as an object")
        return {signature_inputs[0]: _tensor(rows)}, True
    columns = body["inputs"]
    if isinstance(columns, dict) and "b64" not in columns:
        return {k: _tensor(v) for k, v in columns.items()}, False
    if len(signature_inputs) != 1:
        raise RestError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the signature has inputs {signature_inputs}: give 'inputs' as an object")
    return {signature_inputs[0]: _tensor(columns)}, False


class RestApp:
    """The WSGI application; ``store`` is the server's ModelStore."""

    def __init__(self, store):
        self.store = store

    def __call__(self, environ, start_response):
        request = Request(environ)
        request.max_content_length = MAX_BODY
        try:
            endpoint, args = ROUTES.bind_to_environ(environ).match()
            body, status = getattr(self, endpoint)(request, **args), 200
        except HTTPException as e:
            body, status = {"error": e.description}, e.code or 500
        except Exception as e:       # noqa: BLE001 (every failure answers TF Serving's error shape)
            body, status = self._error(e)
        return Response(json.dumps(body), status, mimetype="application/json")(environ, start_response)

    @staticmethod
    def _error(e: Exception) -> tuple[dict, int]:
        import tensorflow as tf

        from serving.errors import ServingError, reason_of

        if isinstance(e, (ServingError, RestError)):
            return {"error": str(e)}, HTTP_STATUS.get(e.code, 500)
        if isinstance(e, tf.errors.InvalidArgumentError):
            return {"error": reason_of(e.message)}, 400
        if isinstance(e, (ValueError, TypeError)):
            return {"error": str(e)}, 400
        raise e

    def status(self, request, name, version=None, label=None):
        from google.protobuf import json_format

        response = self.store.status_response(_spec(name, version, label))
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         including_default_value_fields=True)

    def metadata(self, request, name, version=None, label=None):
        from google.protobuf import json_format

        lv, sig_map = self.store.signature_map(_spec(name, version, label))
        return {"model_spec": {"name": lv.name, "signature_name": "", "version": str(lv.version)},
                "metadata": {"signature_def": json_format.MessageToDict(sig_map, preserving_proto_field_name=True)}}

    def predict(self, request, name, version=None, label=None):
        try:
            body = json.loads(request.get_data(cache=False) or b"null")
        except (ValueError, RecursionError):
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, "the request body must be a JSON object")
        signature = body.get("signature_name") or "serving_default"
        if not isinstance(signature, str):
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, "signature_name must be a string")
        spec = _spec(name, version, label, signature)
        lv = self.store.resolve(spec)
        if signature not in lv.signature_defs:
            raise RestError(grpc.StatusCode.INVALID_ARGUMENT, f"Serving signature key \"{signature}\" not found.")
        inputs, rows = _inputs(body, sorted(lv.signature_defs[signature].inputs))
        _, _, outputs = self.store.predict(spec, inputs)
        encoded = {k: _encode(k, v) for k, v in outputs.items()}
        if not rows:
            return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
        if len(encoded) == 1:
            return {"predictions": next(iter(encoded.values()))}
        count = len(next(iter(encoded.values())))
        return {"predictions": [{k: v[i] for k, v in encoded.items()} for i in range(count)]}
