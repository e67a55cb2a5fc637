"""TensorFlow Serving's messages and gRPC method paths, without importing TensorFlow.

The protocol is TF Serving's own: its ``.proto`` definitions (``tensorflow_serving/apis``,
``tensorflow_serving/config`` and the ``tensorflow/core/framework`` files they import), taken
from the installed tensorflow-serving-api as a ``FileDescriptorSet`` (``tensorflow_serving.binpb``
beside this module), and turned into message classes in a private descriptor pool at import.
So the gateway (and its image) needs only protobuf and grpcio, not TensorFlow's 690 MB per
process, and a process that also imports TensorFlow (the embedded server, the tests) sees no
clash with TensorFlow's own registrations: the names, field numbers and so the wire format are
the same. ``BatchingParameters`` (the ``--batching_parameters_file`` format) does not ship with
tensorflow-serving-api; it is declared with the package, names and field numbers of
``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``.

After upgrading tensorflow-serving-api, rebuild the descriptor set (a test fails until then);
``serving.protos_build`` says how it is made:

    python -m serving protos
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTORS = Path(__file__).with_name("tensorflow_serving.binpb")


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
        pool.Add(fd)
    return pool


POOL = _pool()


def message(full_name: str):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


ModelServerConfig = message("tensorflow.serving.ModelServerConfig")
BatchingParameters = message("tensorflow.serving.BatchingParameters")
TensorProto = message("tensorflow.TensorProto")
PredictRequest = message("tensorflow.serving.PredictRequest")
PredictResponse = message("tensorflow.serving.PredictResponse")
GetModelStatusRequest = message("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = message("tensorflow.serving.GetModelStatusResponse")
GetModelMetadataRequest = message("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = message("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap = message("tensorflow.serving.SignatureDefMap")
DataType = POOL.FindEnumTypeByName("tensorflow.DataType")
VersionState = POOL.FindEnumTypeByName("tensorflow.serving.ModelVersionStatus.State")
# gRPC paths are /<package>.<Service>/<Method> (tensorflow_serving/apis/*_service.proto); the
# service files themselves are left out of the set, as the messages are all a client needs.
PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
