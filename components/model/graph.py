"""The serving graph of a trained model: a ``tf.Module`` whose signatures decode, stain-normalize,
resize and preprocess image bytes exactly as training did, then answer.

- ``serving_default``: ``image_bytes`` (string batch of PNG/JPEG/BMP) -> ``probability``
  (float32, calibrated), ``label`` (int64, at the threshold chosen on validation), ``threshold``;
- ``explain``: ``image_bytes`` -> ``heatmap`` (Grad-CAM of the predicted class on the last
  convolutional block, image_size x image_size, 0..1) and ``probability``.
``assets.extra/`` gets TF Serving's warm-up requests and ``graph.json`` (what the graph was built
from: the model, its threshold and temperature).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from components.core import artifacts
from components.core.atomic import write_json


def serving_module(model, modality: str, image_size: int, threshold: float, last_conv: str,
                   stain_reference=None, temperature: float = 1.0):
    import keras
    import tensorflow as tf

    from components.model import preprocess
    from components.data import macenko

    def prepare(image_bytes):
        image = preprocess.decode(image_bytes)
        if stain_reference is not None:
            image = macenko.normalize_tf(preprocess.to_rgb(image), stain_reference)
        return preprocess.model_input(image, modality, image_size)

    # The SavedModel tracks the models' variables, not the Keras objects (as keras.export's
    # ExportArchive does): walking a DenseNet's 400 layers for trackables, and tracing each Keras
    # model's own default signature, took longer than tracing both of ours.
    grad_model = keras.Model(model.inputs, [model.get_layer(last_conv).output, model.output])

    class Servable(tf.Module):
        def __init__(self):
            super().__init__()
            self.variables_of_the_model = list(model.variables)
            self.threshold = tf.constant(threshold, tf.float32)
            self.temperature = tf.constant(temperature, tf.float32)

        def calibrated(self, p):
            """Temperature scaling fitted on validation: sigmoid(logit(p) / T)."""
            p = tf.clip_by_value(tf.cast(p, tf.float32), 1e-7, 1.0 - 1e-7)
            return tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / self.temperature)

        def images(self, image_bytes):
            return tf.map_fn(prepare, image_bytes,
                             fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            p = tf.reshape(self.calibrated(model(self.images(image_bytes), training=False)), [-1])
            return {"probability": p, "label": tf.cast(p >= self.threshold, tf.int64),
                    "threshold": tf.fill(tf.shape(p), self.threshold)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def explain(self, image_bytes):
            images = self.images(image_bytes)
            with tf.GradientTape() as tape:
                conv, prob = grad_model(images, training=False)
                prob = self.calibrated(prob)
                # explain the decision taken: evidence for "positive" above the threshold,
                # for "negative" below it (otherwise a negative call shows an empty map)
                target = tf.where(prob >= self.threshold, prob, 1.0 - prob)
            grads = tf.cast(tape.gradient(target, conv), tf.float32)
            conv = tf.cast(conv, tf.float32)
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)        # Grad-CAM channel weights
            cam = tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1, keepdims=True))
            cam = tf.image.resize(cam, [image_size, image_size], method="bilinear")[..., 0]
            cam = cam / (tf.reduce_max(cam, axis=[1, 2], keepdims=True) + 1e-8)
            return {"heatmap": cam, "probability": tf.reshape(prob, [-1])}

    return Servable()


def warmup_records(path: Path, model_name: str, image_size: int) -> None:
    """TF Serving replays these at load time so the first real request is not the slow one."""
    import tensorflow as tf
    from PIL import Image
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    buf = io.BytesIO()
    Image.fromarray(np.full((image_size, image_size, 3), 128, np.uint8)).save(buf, format="PNG")
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([buf.getvalue()], dtype=tf.string))
    with tf.io.TFRecordWriter(str(path)) as writer:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def facts(training: dict, evaluation: dict) -> dict:
    """What a graph is built from, beside the model: a card may be added to it only while these hold."""
    return {"model_name": training["model_name"], "threshold": evaluation["threshold"],
            "temperature": evaluation.get("temperature", {}).get("value", 1.0)}


def save(stage: Path, model, training: dict, evaluation: dict) -> None:
    """The SavedModel of ``model`` with both signatures and its warm-up requests, into ``stage``."""
    import tensorflow as tf

    from components.model import backbones
    from components.data import macenko

    config = training["config"]
    reference = macenko.reference_from_json(training["stain"]) if training.get("stain") else None
    built = facts(training, evaluation)
    module = serving_module(model, config["modality"], config["image_size"], built["threshold"],
                            backbones.BACKBONES[config["backbone"]].last_conv, reference, built["temperature"])
    tf.saved_model.save(module, str(stage), signatures={"serving_default": module.serve, "explain": module.explain})
    (stage / "assets.extra").mkdir(exist_ok=True)
    warmup_records(stage / "assets.extra" / artifacts.WARMUP_FILE, training["model_name"], config["image_size"])
    write_json(stage / "assets.extra" / artifacts.GRAPH, built)
