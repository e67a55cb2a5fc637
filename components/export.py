"""Export a trained, evaluated model as a TF Serving SavedModel.

Signatures (decoding, channel handling, Macenko stain normalization with the train-fitted
reference when the training tiles had it, resizing and the modality's preprocessing are in the
graph, the same functions and reference training used):
- ``serving_default``: ``image_bytes`` (string batch of PNG/JPEG/BMP) -> ``probability``
  (float32), ``label`` (int64, at the threshold chosen on validation), ``threshold`` (float32);
- ``explain``: ``image_bytes`` -> ``heatmap`` (Grad-CAM of the predicted class on the last
  convolutional block, image_size x image_size, 0..1) and ``probability``.
``assets.extra/`` holds ``model_card.json``, ``tf_serving_warmup_requests`` and the evaluation's
pictures (ROC, confusion matrix, calibration, learning curves). With ``--ensemble`` (the cohort
ensemble's evaluation, ``components.ensemble``) the card also carries the ensemble's members and
validation threshold, which the gateway's compare applies to the three served probabilities.

    python -m components.export --model DIR --evaluation DIR --out DIR [--ensemble DIR]

In two halves, as the pipeline runs it: ``--graph-only`` writes the SavedModel without its card
(the evaluate step does this with the model it has just scored, in the same process), and
``--graph DIR`` copies that graph and adds the card, without TensorFlow, after the cohort
ensemble the card names.
"""
from __future__ import annotations

import argparse
import datetime
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np

from components import artifacts, catalog, cli
from components.atomic import staged_dir, write_json

WARMUP_FILE = "tf_serving_warmup_requests"
PICTURES = artifacts.PICTURES     # (kept importable here for callers of components.export)


def serving_module(model, modality: str, image_size: int, threshold: float, last_conv: str,
                   stain_reference=None, temperature: float = 1.0):
    import keras
    import tensorflow as tf

    from components import preprocess, stain

    def prepare(image_bytes):
        image = preprocess.decode(image_bytes)
        if stain_reference is not None:
            image = stain.normalize_tf(preprocess.to_rgb(image), stain_reference)
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


def code_version() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            return rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"bcimaging {version('bcimaging')}"
    except PackageNotFoundError:
        return "unknown"


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


def model_card(training: dict, evaluation: dict, blessing: dict, ensemble: dict | None = None) -> dict:
    config = training["config"]
    spec = catalog.modality(config["modality"])
    return {
        "model_name": training["model_name"], "modality": spec.name, "backbone": config["backbone"],
        "strategy": config["strategy"], "label_names": list(spec.label_names), "image_size": config["image_size"],
        "profile": config.get("profile", ""),
        "threshold": evaluation["threshold"], "threshold_rule": evaluation["threshold_rule"],
        "threshold_chosen_on": evaluation["threshold_chosen_on"],
        "test_metrics": evaluation["metrics"], "test_records": evaluation["records"],
        "test_metrics_by_source": {name: {"records": s["records"], "positives": s["positives"],
                                          "metrics": s["metrics"], "calibration_ece": s["calibration"]["ece"]}
                                   for name, s in evaluation.get("sources", {}).items()},
        "test_positives": evaluation["positives"], "confidence": evaluation["confidence"],
        "calibration_ece": evaluation["calibration"]["ece"], "temperature": evaluation.get("temperature"),
        "clusters": evaluation.get("clusters"), "blessing": blessing,
        "stain_normalization": training.get("stain"),
        "data": {"splits": training["splits"], "split_content_sha256": training["split_manifest"],
                 "train_examples": training["train_examples"]},
        "training": {**config, "epochs_run": training["epochs_run"], "class_weights": training["class_weights"],
                     "stages": training["stages"], "best_val_auc": training["best_val_auc"],
                     "tensorflow": training["tensorflow"], "keras": training["keras"]},
        "code_version": code_version(),
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signatures": {"serving_default": "image_bytes -> probability, label, threshold",
                       "explain": "image_bytes -> heatmap (Grad-CAM), probability"},
        "intended_use": "research decision support; not a diagnostic device",
        **({"cohort_ensemble": ensemble} if ensemble else {}),
        **({"drift_reference": evaluation["drift_reference"]} if evaluation.get("drift_reference") else {}),
    }


GRAPH = "graph.json"       # in assets.extra/: what a graph was built from (the card step checks it)


def _inputs(model_dir: Path, evaluation_dir: Path) -> tuple[dict, dict]:
    training = artifacts.read_json(model_dir, artifacts.TRAINING)
    evaluation = artifacts.read_json(evaluation_dir, artifacts.METRICS)
    if evaluation["model_name"] != training["model_name"]:
        raise cli.UserError(f"{evaluation_dir} evaluated {evaluation['model_name']}, not {training['model_name']}")
    return training, evaluation


def _graph_facts(training: dict, evaluation: dict) -> dict:
    return {"model_name": training["model_name"], "threshold": evaluation["threshold"],
            "temperature": evaluation.get("temperature", {}).get("value", 1.0)}


def _save_graph(stage: Path, model, training: dict, evaluation: dict) -> None:
    import tensorflow as tf

    from components import models, stain

    config = training["config"]
    reference = stain.reference_from_json(training["stain"]) if training.get("stain") else None
    facts = _graph_facts(training, evaluation)
    module = serving_module(model, config["modality"], config["image_size"], facts["threshold"],
                            models.BACKBONES[config["backbone"]].last_conv, reference, facts["temperature"])
    tf.saved_model.save(module, str(stage), signatures={"serving_default": module.serve, "explain": module.explain})
    (stage / "assets.extra").mkdir(exist_ok=True)
    warmup_records(stage / "assets.extra" / WARMUP_FILE, training["model_name"], config["image_size"])
    write_json(stage / "assets.extra" / GRAPH, facts)


def _write_card(stage: Path, training: dict, evaluation: dict, evaluation_dir: Path,
                ensemble_dir: Path | None) -> dict:
    from components import ensemble

    cohort = ensemble.card_entry(ensemble_dir) if ensemble_dir else None
    if cohort and training["model_name"] not in cohort["members"]:
        raise cli.UserError(f"{ensemble_dir} is the ensemble of {cohort['members']}, not of {training['model_name']}")
    card = model_card(training, evaluation, artifacts.read_blessing(evaluation_dir), cohort)
    write_json(stage / "assets.extra" / "model_card.json", card)
    for picture in PICTURES:            # shown on the gateway's model page
        if (evaluation_dir / picture).exists():
            shutil.copy(evaluation_dir / picture, stage / "assets.extra" / picture)
    return card


def load_model(model_dir: str | Path):
    """The Keras model a training saved. Loading it is where a scoring process first starts
    TensorFlow, so Eigen's kernels are chosen here (``components.repeatable``)."""
    from components import repeatable

    repeatable.before_tensorflow()
    import keras

    from components import models  # noqa: F401  (registers BackbonePreprocess for loading)

    return keras.models.load_model(Path(model_dir) / artifacts.MODEL, compile=False)


def save_graph(model_dir: str | Path, evaluation_dir: str | Path, out: str | Path, model=None) -> dict:
    """TensorFlow's half of an export: the SavedModel with its signatures and warmup requests,
    no card. The pipeline's evaluate step calls it with the model it has just scored, so a model
    costs one TensorFlow process after training, not two; ``card`` finishes the export."""
    model_dir, evaluation_dir = Path(model_dir), Path(evaluation_dir)
    training, evaluation = _inputs(model_dir, evaluation_dir)
    with staged_dir(out) as stage:
        _save_graph(stage, model if model is not None else load_model(model_dir), training, evaluation)
    return _graph_facts(training, evaluation)


def card(graph_dir: str | Path, model_dir: str | Path, evaluation_dir: str | Path, out: str | Path,
         ensemble_dir: str | Path | None = None) -> dict:
    """The export from a saved graph: a copy of it with the model card and the evaluation's
    pictures. No TensorFlow: it runs after the cohort ensemble, which the card names."""
    graph_dir, model_dir, evaluation_dir = Path(graph_dir), Path(model_dir), Path(evaluation_dir)
    training, evaluation = _inputs(model_dir, evaluation_dir)
    built, wanted = artifacts.read_json(graph_dir / "assets.extra", GRAPH, default={}), _graph_facts(training, evaluation)
    if built != wanted:
        raise cli.UserError(f"{graph_dir} was not saved from {model_dir} with the threshold and temperature of "
                            f"{evaluation_dir} ({built} != {wanted}); save it again with components.export --graph-only")
    with staged_dir(out) as stage:
        shutil.copytree(graph_dir, stage, dirs_exist_ok=True)
        return _write_card(stage, training, evaluation, evaluation_dir, Path(ensemble_dir) if ensemble_dir else None)


def run(model_dir: str | Path, evaluation_dir: str | Path, out: str | Path, ensemble_dir: str | Path | None = None) -> dict:
    """The whole export in one process: graph and card."""
    model_dir, evaluation_dir = Path(model_dir), Path(evaluation_dir)
    training, evaluation = _inputs(model_dir, evaluation_dir)
    model = load_model(model_dir)
    with staged_dir(out) as stage:
        _save_graph(stage, model, training, evaluation)
        return _write_card(stage, training, evaluation, evaluation_dir, Path(ensemble_dir) if ensemble_dir else None)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="output folder of components.train")
    ap.add_argument("--evaluation", required=True, help="output folder of components.evaluate")
    ap.add_argument("--out", required=True, help="SavedModel folder to write")
    ap.add_argument("--ensemble", help="the cohort ensemble's evaluation folder (components.ensemble)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--graph-only", action="store_true", help="write the graph without its card (TensorFlow's half)")
    how.add_argument("--graph", help="finish the export from this graph (--graph-only's output): no TensorFlow")
    return ap


def _cli(a, _):
    if a.graph_only:
        name = save_graph(a.model, a.evaluation, a.out)["model_name"]
        print(f"saved the serving graph of {name} to {a.out} (no card yet: --graph {a.out} adds it)")
        return
    done = card(a.graph, a.model, a.evaluation, a.out, a.ensemble) if a.graph else run(a.model, a.evaluation, a.out, a.ensemble)
    print(f"exported {done['model_name']} to {a.out}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
