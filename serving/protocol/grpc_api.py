"""TensorFlow Serving's gRPC API over the store: ``PredictionService`` (Predict, GetModelMetadata)
and ``ModelService`` (GetModelStatus), with TF Serving's status codes."""
from __future__ import annotations

import grpc

from serving.errors import ServingError, reason_of
from serving.store import ModelStore


def servicers(store: ModelStore):
    import tensorflow as tf
    from tensorflow_serving.apis import (get_model_metadata_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    def guarded(method):
        def wrapper(self, request, context):
            try:
                return method(self, request, context)
            except ServingError as e:
                context.abort(e.code, str(e))
            except tf.errors.InvalidArgumentError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason_of(e.message))
            except (ValueError, TypeError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return wrapper

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        @guarded
        def Predict(self, request, context):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            lv, key, outputs = store.predict(request.model_spec, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = lv.name
            response.model_spec.version.value = lv.version
            response.model_spec.signature_name = key
            for name, value in outputs.items():
                if not request.output_filter or name in request.output_filter:
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response

        @guarded
        def GetModelMetadata(self, request, context):
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is the one supported")
            lv, sig_map = store.signature_map(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = lv.name
            response.model_spec.version.value = lv.version
            response.metadata["signature_def"].Pack(sig_map)
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        @guarded
        def GetModelStatus(self, request, context):
            return store.status_response(request.model_spec)

    return Prediction(), Models()
