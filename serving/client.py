"""The gRPC client the gateway uses to talk to TensorFlow Serving (or the embedded server).

One channel per server; every call has a deadline; UNAVAILABLE is retried with a short
back-off while the deadline allows; the models of a compare are asked in parallel. It imports
no TensorFlow: the messages are TF Serving's own, from ``serving.protos``, and tensor protos
are built and read by hand, so the gateway stays light.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np

from components.core.tls import TLSFiles
from serving import protos

_DT = protos.DataType.values_by_name
_NUMPY = {_DT["DT_FLOAT"].number: ("float_val", np.float32), _DT["DT_INT64"].number: ("int64_val", np.int64),
          _DT["DT_INT32"].number: ("int_val", np.int32), _DT["DT_DOUBLE"].number: ("double_val", np.float64)}
_RAW = {dtype: numpy for dtype, (_, numpy) in _NUMPY.items()}


class ServingUnavailable(Exception):
    """The model server could not be reached within the deadline."""


class ServingRejected(Exception):
    """The model server answered with an error (unknown model, bad input...)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Prediction:
    model: str
    version: int
    outputs: dict[str, np.ndarray]


def string_tensor(values: list[bytes]):
    """A 1-D DT_STRING TensorProto."""
    tensor = protos.TensorProto(dtype=_DT["DT_STRING"].number, string_val=values)
    tensor.tensor_shape.dim.add(size=len(values))
    return tensor


def to_numpy(t) -> np.ndarray:
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=_RAW[t.dtype]).reshape(shape)
    field, dtype = _NUMPY[t.dtype]
    values = np.array(getattr(t, field), dtype=dtype)
    return np.broadcast_to(values, shape).copy() if values.size == 1 and np.prod(shape) > 1 else values.reshape(shape)


RENEW_AFTER_S = 5.0           # a channel that answered nothing this long is replaced


class ServingClient:
    """TF Serving's gRPC API; over TLS when ``tls`` is given (its ``ca`` the model server's
    authority, its ``cert``/``key`` this client's own certificate where the server asks for one)."""

    def __init__(self, target: str, deadline_s: float = 10.0, retries: int = 3, backoff_s: float = 0.1,
                 tls: TLSFiles | None = None):
        self.target, self.deadline_s, self.retries, self.backoff_s = target, deadline_s, retries, backoff_s
        self._options = [
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            # gRPC's default reconnect back-off grows to 2 minutes; keep it short so the gateway
            # recovers within seconds of the model server coming back. The "min" is also gRPC's
            # shortest allowance for one connection attempt, TLS handshake included: 5 s, not 250 ms
            ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 5000),
            ("grpc.max_reconnect_backoff_ms", 2000)]
        self._credentials = None
        if tls:
            cert, key, ca = tls.read()
            self._credentials = grpc.ssl_channel_credentials(ca, key, cert)
        self._renewal = threading.Lock()
        self._open()

    def _open(self) -> None:
        self.channel = grpc.secure_channel(self.target, self._credentials, options=self._options) \
            if self._credentials else grpc.insecure_channel(self.target, options=self._options)
        self._predict = self._method(protos.PREDICT, protos.PredictResponse)
        self._metadata = self._method(protos.GET_MODEL_METADATA, protos.GetModelMetadataResponse)
        self._status = self._method(protos.GET_MODEL_STATUS, protos.GetModelStatusResponse)
        self._answered = time.monotonic()

    def _renew(self) -> None:
        """A new channel once this one has answered nothing for RENEW_AFTER_S: a TLS channel whose
        first attempts met no server kept failing its handshakes after the server came up
        (grpcio 1.65), so a gateway started before its model server never became ready. The old
        channel is dropped, not closed: calls still on it finish or fail on their own."""
        with self._renewal:
            if time.monotonic() - self._answered >= RENEW_AFTER_S:
                self._open()

    def _method(self, path: str, response_class):
        return self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response_class.FromString)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServingUnavailable(f"model server at {self.target} did not answer within {self.deadline_s:g} s")
        return remaining

    def _call(self, method, request, deadline: float):
        return method.future(request, timeout=self._remaining(deadline))

    def _blocking(self, method, request, deadline: float):
        """One call answered on this thread: a future costs a thread start (gRPC's channel spin
        thread, when no other call is pending) and a hand-off back, about a millisecond on a
        loaded machine; parallel calls (predict_many) still use futures."""
        return self._result(lambda: method(request, timeout=self._remaining(deadline)), method, request, deadline)

    def _result(self, answer, method, request, deadline: float):
        """``answer()`` (a pending future's ``result`` or a blocking call), retried on UNAVAILABLE
        by blocking calls with back-off within the deadline."""
        attempt = 0
        while True:
            try:
                result = answer()
                self._answered = time.monotonic()
                return result
            except grpc.RpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    attempt += 1
                    if attempt > self.retries or code == grpc.StatusCode.DEADLINE_EXCEEDED or \
                            time.monotonic() + self.backoff_s * attempt >= deadline:
                        self._renew()
                        raise ServingUnavailable(f"model server at {self.target} is unavailable ({e.details()})") from e
                    time.sleep(self.backoff_s * attempt)
                    answer = lambda: method(request, timeout=self._remaining(deadline))  # noqa: E731
                    continue
                raise ServingRejected(code, e.details()) from e

    def _request(self, model: str, images: list[bytes], signature: str, version_label: str | None,
                 version: int | None = None):
        request = protos.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        elif version_label:
            request.model_spec.version_label = version_label
        request.inputs["image_bytes"].CopyFrom(string_tensor(images))
        return request

    def predict_batch(self, model: str, images: list[bytes], signature: str = "serving_default",
                      version: int | None = None, version_label: str | None = None) -> Prediction:
        """One call with a batch of images (outputs have one row per image)."""
        deadline = time.monotonic() + self.deadline_s
        request = self._request(model, images, signature, version_label, version)
        response = self._blocking(self._predict, request, deadline)
        return Prediction(response.model_spec.name, response.model_spec.version.value,
                          {k: to_numpy(v) for k, v in response.outputs.items()})

    def predict_many(self, models: list[str], image: bytes, signature: str = "serving_default",
                     version_label: str | None = None,
                     version_labels: dict[str, str | None] | None = None) -> list[Prediction | Exception]:
        """Ask every model at once (in parallel); each result is a Prediction or the error. Each
        model at ``version_labels[model]`` when given, else at ``version_label``."""
        deadline = time.monotonic() + self.deadline_s
        requests = [self._request(m, [image], signature, (version_labels or {}).get(m, version_label)) for m in models]
        pending = [self._call(self._predict, r, deadline) for r in requests]
        results: list[Prediction | Exception] = []
        for future, request in zip(pending, requests):
            try:
                response = self._result(future.result, self._predict, request, deadline)
                results.append(Prediction(response.model_spec.name, response.model_spec.version.value,
                                          {k: to_numpy(v) for k, v in response.outputs.items()}))
            except (ServingUnavailable, ServingRejected) as e:
                results.append(e)
        return results

    def predict(self, model: str, image: bytes, signature: str = "serving_default",
                version_label: str | None = None) -> Prediction:
        return self.predict_batch(model, [image], signature, version_label=version_label)

    def status(self, model: str) -> list[tuple[int, str]]:
        request = protos.GetModelStatusRequest()
        request.model_spec.name = model
        deadline = time.monotonic() + self.deadline_s
        response = self._blocking(self._status, request, deadline)
        return [(s.version, protos.VersionState.values_by_number[s.state].name) for s in response.model_version_status]

    def metadata(self, model: str):
        """The model's SignatureDefMap (TF Serving's GetModelMetadata with signature_def)."""
        request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        deadline = time.monotonic() + self.deadline_s
        response = self._blocking(self._metadata, request, deadline)
        sig_map = protos.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return sig_map

    def close(self):
        self.channel.close()
