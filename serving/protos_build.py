"""Builds ``serving/tensorflow_serving.binpb``, the descriptor set ``serving.protos`` loads:
TF Serving's protocol files as the installed tensorflow-serving-api defines them, so the
gateway speaks exactly TF Serving's gRPC API without importing TensorFlow.

    python -m serving protos          # after upgrading tensorflow-serving-api
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

# The files the gateway, the repository and the clients need; their imports come along.
ROOTS = ("tensorflow_serving/apis/predict.proto", "tensorflow_serving/apis/get_model_metadata.proto",
         "tensorflow_serving/apis/get_model_status.proto", "tensorflow_serving/config/model_server_config.proto")
BATCHING_FILE = "bcimaging/session_bundle_config_subset.proto"


def batching_parameters_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name=BATCHING_FILE, package="tensorflow.serving", syntax="proto3",
                                            dependency=["google/protobuf/wrappers.proto"])
    msg = fd.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, wrapper in [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")]:
        msg.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                      type_name=f".google.protobuf.{wrapper}")
    msg.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    return fd


def build_descriptor_set() -> bytes:
    """The FileDescriptorSet of ROOTS and everything they import, dependencies first, read from
    the installed tensorflow-serving-api (this needs TensorFlow; serving it does not)."""
    import tensorflow  # noqa: F401 (its protos first: tensorflow-serving-api's generated code imports them)
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2  # noqa: F401
    from tensorflow_serving.config import model_server_config_pb2  # noqa: F401

    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(fd):
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dependency in fd.dependencies:
            visit(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        ordered.append(proto)

    for name in ROOTS:
        visit(descriptor_pool.Default().FindFileByName(name))
    ordered.append(batching_parameters_file())
    return descriptor_pb2.FileDescriptorSet(file=ordered).SerializeToString(deterministic=True)


def write(path: str | Path | None = None) -> Path:
    """Write the set atomically (it is read by every gateway and server at import)."""
    path = Path(path) if path else Path(__file__).with_name("tensorflow_serving.binpb")
    from components.core.atomic import write_bytes

    write_bytes(path, build_descriptor_set(), mode=0o644)
    return path
