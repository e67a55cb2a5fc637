"""TensorFlow Serving's config messages.

``ModelServerConfig`` ships with tensorflow-serving-api. ``BatchingParameters`` (the format of
the ``--batching_parameters_file``) does not, so it is declared here with the same package,
names and field numbers as ``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``:
the text and wire formats are therefore TF Serving's own.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2  # noqa: F401 (registers wrappers)
from tensorflow_serving.config import model_server_config_pb2

ModelServerConfig = model_server_config_pb2.ModelServerConfig


def _batching_parameters_class():
    fd = descriptor_pb2.FileDescriptorProto(name="bcimaging/session_bundle_config_subset.proto",
                                            package="tensorflow.serving", syntax="proto3",
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
    pool = descriptor_pool.Default()
    try:  # declared once per process, even if this module is reloaded
        descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    except KeyError:
        pool.Add(fd)
        descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.GetMessageClass(descriptor)


BatchingParameters = _batching_parameters_class()
