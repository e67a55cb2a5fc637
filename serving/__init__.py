"""The model repository (layout, card schema, push, labels, configs, decision history), an embedded
model server that speaks TensorFlow Serving's gRPC and REST APIs around one store, and the gRPC
client the gateway uses."""
