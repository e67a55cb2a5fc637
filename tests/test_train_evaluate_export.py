"""Every backbone x strategy: train 1 epoch at 32 px on sample data, evaluate, export, reload
the SavedModel and check it answers what the Keras model answers for the same PNG bytes."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import compare, export, train
from components.core import artifacts, catalog, cli
from components.data import macenko, records, schema
from components.evaluation import predictions, scoring, stats
from components.model import backbones, preprocess
from tests.conftest import COMBOS, ROOT


@pytest.mark.parametrize("combo", list(COMBOS))
def test_trained_evaluated_exported_model_serves_the_keras_probability(combo, pipeline_outputs, sample_splits):
    backbone, strategy = combo
    modality = COMBOS[combo]
    name = catalog.model_name(modality, backbone, strategy)
    out = pipeline_outputs[name]
    training = json.loads((out / "model" / "training.json").read_text())
    assert training["epochs_run"] == (1 if strategy == "unfrozen" else 2)
    assert [s["stage"] for s in training["stages"]] == (
        ["all layers"] if strategy == "unfrozen" else ["all layers, half size", "all layers, full size"])
    history = json.loads((out / "model" / "history.json").read_text())
    assert len(history["loss"]) == training["epochs_run"] and "val_auc" in history
    assert any((out / "model" / "tensorboard").rglob("events.out.tfevents.*"))

    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for m in stats.METRICS:
        v = metrics["metrics"][m]
        assert v["ci_low"] <= v["value"] <= v["ci_high"], m
    for png in ("roc.png", "confusion_matrix.png", "calibration.png", "learning_curves.png"):
        assert (out / "eval" / png).stat().st_size > 1000, png

    raw_test = sample_splits[modality].parent / "splits" / "test"      # as an uploader sends them
    pngs = [schema.deserialize(r).image_png for r in records.read_records(raw_test)][:5]
    loaded = tf.saved_model.load(str(out / "saved_model"))
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(pngs))
    model = keras.models.load_model(out / "model" / "model.keras", compile=False)
    reference = macenko.reference_from_json(training["stain"]) if training["stain"] else None
    assert (reference is not None) == (modality == "histopathology")

    def prepared(b):
        image = preprocess.decode_rgb(b)
        return preprocess.model_input(macenko.normalize_tf(image, reference) if reference else image, modality, 32)

    x = tf.stack([prepared(b) for b in pngs])
    expected = stats.apply_temperature(model(x, training=False).numpy().reshape(-1), metrics["temperature"]["value"])
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-5)
    threshold = metrics["threshold"]
    assert np.allclose(served["threshold"].numpy(), threshold)
    assert np.array_equal(served["label"].numpy(), (served["probability"].numpy() >= np.float32(threshold)).astype(np.int64))
    heat = loaded.signatures["explain"](image_bytes=tf.constant(pngs[:2]))["heatmap"].numpy()
    assert heat.shape == (2, 32, 32) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 + 1e-6

    card = json.loads((out / "saved_model" / "assets.extra" / "model_card.json").read_text())
    assert card["model_name"] == name and card["threshold"] == threshold
    assert card["label_names"] == list(catalog.modality(modality).label_names)
    assert set(card["test_metrics"]) == set(stats.METRICS)
    assert card["data"]["split_content_sha256"]["test"]
    assert (out / "saved_model" / "assets.extra" / artifacts.WARMUP_FILE).stat().st_size > 0


def test_an_export_in_two_halves_equals_the_export_in_one(pipeline_outputs, sample_splits, tmp_path):
    """The pipeline's way, which the trained-models fixture follows: the evaluate step saves the
    graph of the model it has just scored, the export step adds the card after the ensemble,
    without TensorFlow. Same signatures, answers and card as one export in one process; a graph
    saved for another evaluation is refused."""
    name = catalog.model_name("ultrasound", "vgg16", "unfrozen")
    out = pipeline_outputs[name]
    assert not (out / "graph" / "assets.extra" / "model_card.json").exists()
    ensemble_dir = out.parent / "ensemble"
    code = ("import sys; from components import export; "
            f"export.card({str(out / 'graph')!r}, {str(out / 'model')!r}, {str(out / 'eval')!r}, "
            f"{str(tmp_path / 'halves')!r}, {str(ensemble_dir)!r}); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'the card half imported TensorFlow'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    export.run(out / "model", out / "eval", tmp_path / "whole", ensemble_dir)

    def card(folder):
        c = json.loads((folder / "assets.extra" / "model_card.json").read_text())
        return {k: v for k, v in c.items() if k != "exported_utc"}
    assert card(tmp_path / "halves") == card(tmp_path / "whole") == card(out / "saved_model")
    assert card(out / "saved_model")["cohort_ensemble"]["members"]
    pngs = tf.constant([schema.deserialize(r).image_png for r in records.read_records(sample_splits["ultrasound"] / "test")][:4])
    halves = tf.saved_model.load(str(out / "saved_model")).signatures
    whole = tf.saved_model.load(str(tmp_path / "whole")).signatures
    assert {"serving_default", "explain"} <= set(halves)
    np.testing.assert_array_equal(halves["serving_default"](image_bytes=pngs)["probability"].numpy(),
                                  whole["serving_default"](image_bytes=pngs)["probability"].numpy())
    other = catalog.model_name("ultrasound", "resnet50", "unfrozen")
    with pytest.raises(cli.UserError, match="evaluated"):
        export.card(out / "graph", out / "model", pipeline_outputs[other] / "eval", tmp_path / "wrong")
    with pytest.raises(cli.UserError, match="was not saved from"):
        export.card(out / "graph", pipeline_outputs[other] / "model", pipeline_outputs[other] / "eval",
                    tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


def test_threshold_on_test_is_the_one_chosen_on_validation(pipeline_outputs, sample_splits):
    out = pipeline_outputs["ultrasound-resnet50-unfrozen"]
    splits = sample_splits["ultrasound"]
    model = keras.models.load_model(out / "model" / "model.keras", compile=False)
    validation = scoring.score(model, splits / "validation", "ultrasound", 32)
    yv, pv = validation.y, validation.p
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    temperature = metrics["temperature"]["value"]
    assert temperature == pytest.approx(stats.fit_temperature(yv, pv), rel=1e-6)
    pv = stats.apply_temperature(pv, temperature)
    assert metrics["threshold"] == pytest.approx(stats.choose_threshold(yv, pv))
    assert metrics["threshold_chosen_on"].endswith("validation")
    test = scoring.score(model, splits / "test", "ultrasound", 32)
    yt, pt = test.y, stats.apply_temperature(test.p, temperature)
    assert metrics["metrics"]["f1"]["value"] == pytest.approx(stats.at_threshold(yt, pt, metrics["threshold"])["f1"])


def test_cohort_backbones_are_compared_pairwise_with_delong(pipeline_outputs, tmp_path):
    dirs = [pipeline_outputs[n] / "eval" for n in catalog.cohort_models("ultrasound", "unfrozen")]
    results = compare.run(dirs, tmp_path / "cmp.json")
    assert len(results) == 3 and all(0 <= r["p_value"] <= r["p_holm"] <= 1 for r in results)
    assert json.loads((tmp_path / "cmp.json").read_text())["test"].startswith("DeLong")   # one image, one patient
    mixed = [pipeline_outputs["ultrasound-resnet50-unfrozen"] / "eval",
             pipeline_outputs["mammography-resnet50-progressive"] / "eval"]
    with pytest.raises(Exception, match="scored on different examples"):
        compare.run(mixed)


def test_progressive_from_scratch_never_trains_a_head_on_frozen_random_features(pipeline_outputs):
    """Without pretrained weights every stage of `progressive` trains every layer (progressive
    resizing: half size, then full size); with pretrained weights the report's recipe stays."""
    for name, out in pipeline_outputs.items():
        if not name.endswith("progressive"):
            continue
        training = json.loads((out / "model" / "training.json").read_text())
        layers = len(keras.models.load_model(out / "model" / "model.keras", compile=False).layers)
        assert training["stages"] and all(s["trains"] == "all" and s["trainable_layers"] == layers
                                          for s in training["stages"]), name
    for size, epochs in ((32, 2), (48, 8), (64, 40), (224, 40)):
        config = train.TrainConfig(modality="ultrasound", backbone="vgg16", strategy="progressive", image_size=size,
                                   epochs=epochs, weights="none")
        stages = config.stages()
        assert all(s["trains"] == "all" for s in stages)
        assert [s["image_size"] for s in stages] == sorted(s["image_size"] for s in stages)
        assert stages[-1]["image_size"] == size and sum(s["epochs"] for s in stages) == epochs
    pretrained = train.TrainConfig(modality="ultrasound", backbone="vgg16", strategy="progressive", weights="imagenet")
    assert [s["trains"] for s in pretrained.stages()] == ["head", "top"]


def _scored(y, p, prefix="r") -> predictions.Scored:
    n = len(y)
    return predictions.Scored(np.asarray(y), np.asarray(p, float), [f"{prefix}{i}" for i in range(n)],
                           [f"p{i}" for i in range(n)], ["site"] * n)


def test_temperature_and_threshold_see_validation_only(tmp_path):
    """Whatever the test records say, the temperature and threshold are the validation split's:
    two evaluations with the same validation scores and opposite test scores fit the same T and
    threshold; other validation scores fit another T."""
    rng = np.random.default_rng(7)
    yv = (rng.random(300) < 0.3).astype(int)
    pv = np.clip(0.15 + 0.7 * yv + rng.normal(0, 0.25, 300), 0.001, 0.999)     # overconfident-ish
    yt = (rng.random(200) < 0.3).astype(int)
    pt = np.clip(0.2 + 0.6 * yt + rng.normal(0, 0.2, 200), 0.001, 0.999)
    common = dict(model_name="ultrasound-vgg16-unfrozen", modality="ultrasound", examples=tmp_path / "test",
                  threshold_from=tmp_path / "validation", bootstrap=50)
    good = scoring.report(validation=_scored(yv, pv, "v"), test=_scored(yt, pt), out=tmp_path / "a", **common)
    inverted = scoring.report(validation=_scored(yv, pv, "v"), test=_scored(yt, 1 - pt), out=tmp_path / "b", **common)
    assert good["temperature"]["value"] == inverted["temperature"]["value"] == pytest.approx(stats.fit_temperature(yv, pv))
    assert good["threshold"] == inverted["threshold"]
    assert good["metrics"]["roc_auc"]["value"] > 0.9 > 0.1 > inverted["metrics"]["roc_auc"]["value"]
    other = scoring.report(validation=_scored(yv, np.clip(pv ** 3, 0.001, 0.999), "v"), test=_scored(yt, pt),
                            out=tmp_path / "c", **common)
    assert other["temperature"]["value"] != pytest.approx(good["temperature"]["value"], rel=0.05)


def test_a_collapsed_model_is_never_blessed(tmp_path):
    """Found in a study run: VGG16 from scratch answered ~0.50 for every image (Brier .250,
    temperature 54.6, the fitting bound) and was pushed, since its F1 rule was off. A constant
    model, and one whose scores no temperature explains, are refused with the reason, whatever
    the F1 rule; the check can be turned off for plumbing runs only."""
    rng = np.random.default_rng(9)
    yv, yt = (rng.random(200) < 0.4).astype(int), (rng.random(150) < 0.4).astype(int)
    common = dict(model_name="ultrasound-vgg16-unfrozen", modality="ultrasound", examples=tmp_path / "test",
                  threshold_from=tmp_path / "validation", bootstrap=50, min_f1=0.0)
    scoring.report(validation=_scored(yv, np.full(200, 0.5), "v"), test=_scored(yt, np.full(150, 0.5)),
                    out=tmp_path / "constant", **common)
    blessing = json.loads((tmp_path / "constant" / "blessing.json").read_text())
    assert not blessing["blessed"] and blessing["collapsed"] and "barely vary" in blessing["reason"]
    # confidently random: every answer near 0 or 1 whatever the label, so T runs to its bound
    noise = np.where(rng.random(200) < 0.5, 0.001, 0.999)
    result = scoring.report(validation=_scored(yv, noise, "v"), test=_scored(yt, np.where(rng.random(150) < 0.5, 0.001, 0.999)),
                             out=tmp_path / "bound", **common)
    assert stats.temperature_at_upper_bound(result["temperature"]["value"])
    blessing = json.loads((tmp_path / "bound" / "blessing.json").read_text())
    assert not blessing["blessed"] and "fitting bound" in blessing["reason"]
    # a model that discriminates is blessed under the same rule; with the check off, so is the constant one
    good = np.clip(0.2 + 0.6 * yv + rng.normal(0, 0.15, 200), 0.01, 0.99)
    scoring.report(validation=_scored(yv, good, "v"), test=_scored(yt, np.clip(0.2 + 0.6 * yt, 0.01, 0.99)),
                    out=tmp_path / "good", **common)
    assert json.loads((tmp_path / "good" / "blessing.json").read_text())["blessed"]
    scoring.report(validation=_scored(yv, np.full(200, 0.5), "v"), test=_scored(yt, np.full(150, 0.5)),
                    out=tmp_path / "off", collapse_sd=0.0, **common)
    assert json.loads((tmp_path / "off" / "blessing.json").read_text())["blessed"]


def test_training_twice_gives_the_same_weights(sample_splits, tmp_path):
    """Same splits, settings and seed: bit-identical weights from two separate processes on
    machines that differ in threads (TensorFlow's pools of 2 against 1, as a bigger machine or
    a run beside others has): the thread count is a training setting, oneDNN is off, the
    shuffle, augmentation and initialisation are seeded. Another seed starts from other
    weights. VGG16 from scratch is the BatchNormalization variant.

    The two run one after the other. Side by side, beside the other worker, they parted in one
    suite run of four: on a busy machine a training still parts now and then at a rounding (a
    known limitation: docs/determinism.md). This test checks what it names,
    the thread settings, and stays as strict as it was: any difference fails it."""
    def start(name, seed, machine_threads):
        # batch 4: over train.EAGER_BELOW_STEPS steps, so the traced graph the study runs is what repeats
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": machine_threads, "TF_NUM_INTEROP_THREADS": machine_threads,
               "OMP_NUM_THREADS": machine_threads, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        return subprocess.Popen(
            [sys.executable, "-m", "components.train", "--splits", str(sample_splits["ultrasound"]),
             "--modality", "ultrasound", "--backbone", "vgg16", "--strategy", "unfrozen", "--out", str(tmp_path / name),
             "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--weights", "none", "--seed", str(seed),
             "--warmup-epochs", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    for name, machine_threads in (("a", "2"), ("b", "1")):
        proc = start(name, 3, machine_threads)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"training {name} failed:\n{output[-3000:]}"

    def trained(name):
        model = keras.models.load_model(tmp_path / name / "model.keras", compile=False)
        keras.backend.clear_session()
        return model, model.get_weights()

    (a, wa), (_, wb) = trained("a"), trained("b")
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["execution"] == "graph"
    assert record["threads_per_op"] == 1 and record["onednn"] is False
    assert record["denormals_flushed_on_every_thread"] is True
    assert any(l.name == "block1_conv1_bn" for l in a.layers)
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    seeded = [backbones.build("vgg16", 32, "none", seed).get_weights() for seed in (3, 4)]
    keras.backend.clear_session()
    assert not all(np.array_equal(x, y) for x, y in zip(*seeded))


def test_a_functions_inline_ops_flush_denormals_like_the_pool_threads():
    """Why two studies side by side parted: a tf.function's cheap ops run on the calling thread,
    which kept denormals, while TensorFlow's pool threads flush them to zero, and which thread
    runs an op follows the executor's timing. Training and evaluation set the calling thread's
    FTZ and DAZ too (components.model.repeatable), so the thread no longer matters."""
    code = """
from components.model import repeatable
repeatable.before_tensorflow()                                    # Eigen's kernels, as training runs
import numpy as np, tensorflow as tf
repeatable.pin_threads(tf, 1)                                     # one thread per op, as training runs
tiny = tf.constant(np.full([4], 1e-40, np.float32))           # a denormal float32
times_one = tf.function(lambda x: x * 1.0)
kept = bool(times_one(tiny).numpy()[0] > 0)                       # compared before DAZ is set
pooled = bool(tf.reduce_sum(tiny).numpy() == 0)                   # runs on a pool thread
assert repeatable.flush_denormals()
print(kept, pooled, times_one(tiny).numpy()[0] == 0)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["True", "True", "True"], done.stdout + done.stderr[-1500:]
