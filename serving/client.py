"""The gRPC client the gateway uses to talk to TensorFlow Serving (or the embedded server).

One channel per server; every call has a deadline; UNAVAILABLE is retried with a short
back-off while the deadline allows; the models of a compare are asked in parallel. It imports
no TensorFlow (tensor protos are built and read by hand), so the gateway stays light.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

_NUMPY = {types_pb2.DT_FLOAT: ("float_val", np.float32), types_pb2.DT_INT64: ("int64_val", np.int64),
          types_pb2.DT_INT32: ("int_val", np.int32), types_pb2.DT_DOUBLE: ("double_val", np.float64)}
_RAW = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_INT64: np.int64, types_pb2.DT_INT32: np.int32,
        types_pb2.DT_DOUBLE: np.float64}


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


def string_tensor(values: list[bytes]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values,
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                      dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))


def to_numpy(t: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=_RAW[t.dtype]).reshape(shape)
    field, dtype = _NUMPY[t.dtype]
    values = np.array(getattr(t, field), dtype=dtype)
    return np.broadcast_to(values, shape).copy() if values.size == 1 and np.prod(shape) > 1 else values.reshape(shape)


class ServingClient:
    def __init__(self, target: str, deadline_s: float = 10.0, retries: int = 3, backoff_s: float = 0.1):
        self.target, self.deadline_s, self.retries, self.backoff_s = target, deadline_s, retries, backoff_s
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            # gRPC's default reconnect back-off grows to 2 minutes; keep it short so the gateway
            # recovers within seconds of the model server coming back
            ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _call(self, method, request, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServingUnavailable(f"model server at {self.target} did not answer within {self.deadline_s:g} s")
        return method.future(request, timeout=remaining)

    def _result(self, future, method, request, deadline: float):
        attempt = 0
        while True:
            try:
                return future.result()
            except grpc.RpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    attempt += 1
                    if attempt > self.retries or code == grpc.StatusCode.DEADLINE_EXCEEDED or \
                            time.monotonic() + self.backoff_s * attempt >= deadline:
                        raise ServingUnavailable(f"model server at {self.target} is unavailable ({e.details()})") from e
                    time.sleep(self.backoff_s * attempt)
                    future = self._call(method, request, deadline)
                    continue
                raise ServingRejected(code, e.details()) from e

    def _request(self, model: str, image: bytes, signature: str, version_label: str | None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version_label:
            request.model_spec.version_label = version_label
        request.inputs["image_bytes"].CopyFrom(string_tensor([image]))
        return request

    def predict_many(self, models: list[str], image: bytes, signature: str = "serving_default",
                     version_label: str | None = None) -> list[Prediction | Exception]:
        """Ask every model at once (in parallel); each result is a Prediction or the error."""
        deadline = time.monotonic() + self.deadline_s
        requests = [self._request(m, image, signature, version_label) for m in models]
        pending = [self._call(self.prediction.Predict, r, deadline) for r in requests]
        results: list[Prediction | Exception] = []
        for future, request in zip(pending, requests):
            try:
                response = self._result(future, self.prediction.Predict, request, deadline)
                results.append(Prediction(response.model_spec.name, response.model_spec.version.value,
                                          {k: to_numpy(v) for k, v in response.outputs.items()}))
            except (ServingUnavailable, ServingRejected) as e:
                results.append(e)
        return results

    def predict(self, model: str, image: bytes, signature: str = "serving_default",
                version_label: str | None = None) -> Prediction:
        result = self.predict_many([model], image, signature, version_label)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def status(self, model: str) -> list[tuple[int, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        deadline = time.monotonic() + self.deadline_s
        response = self._result(self._call(self.models.GetModelStatus, request, deadline),
                                self.models.GetModelStatus, request, deadline)
        return [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state))
                for s in response.model_version_status]

    def metadata(self, model: str) -> get_model_metadata_pb2.SignatureDefMap:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        deadline = time.monotonic() + self.deadline_s
        response = self._result(self._call(self.prediction.GetModelMetadata, request, deadline),
                                self.prediction.GetModelMetadata, request, deadline)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return sig_map

    def close(self):
        self.channel.close()
