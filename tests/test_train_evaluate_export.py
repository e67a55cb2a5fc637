"""Every backbone x strategy: train 1 epoch at 32 px on sample data, evaluate, export, reload
the SavedModel and check it answers what the Keras model answers for the same PNG bytes."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import catalog, compare, evaluate, export, preprocess, records, schema, stain, stats, train
from tests.conftest import COMBOS

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
    reference = stain.reference_from_json(training["stain"]) if training["stain"] else None
    assert (reference is not None) == (modality == "histopathology")

    def prepared(b):
        image = preprocess.decode_rgb(b)
        return preprocess.model_input(stain.normalize_tf(image, reference) if reference else image, modality, 32)

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
    assert (out / "saved_model" / "assets.extra" / export.WARMUP_FILE).stat().st_size > 0


def test_threshold_on_test_is_the_one_chosen_on_validation(pipeline_outputs, sample_splits):
    out = pipeline_outputs["ultrasound-resnet50-unfrozen"]
    splits = sample_splits["ultrasound"]
    model = keras.models.load_model(out / "model" / "model.keras", compile=False)
    yv, pv, _, _ = evaluate.score(model, splits / "validation", "ultrasound", 32)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    temperature = metrics["temperature"]["value"]
    assert temperature == pytest.approx(stats.fit_temperature(yv, pv), rel=1e-6)
    pv = stats.apply_temperature(pv, temperature)
    assert metrics["threshold"] == pytest.approx(stats.choose_threshold(yv, pv))
    assert metrics["threshold_chosen_on"].endswith("validation")
    yt, pt, _, _ = evaluate.score(model, splits / "test", "ultrasound", 32)
    pt = stats.apply_temperature(pt, temperature)
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


def test_temperature_and_threshold_see_validation_only(tmp_path):
    """Whatever the test records say, the temperature and threshold are the validation split's:
    two evaluations with the same validation scores and opposite test scores fit the same T and
    threshold; other validation scores fit another T."""
    rng = np.random.default_rng(7)
    yv = (rng.random(300) < 0.3).astype(int)
    pv = np.clip(0.15 + 0.7 * yv + rng.normal(0, 0.25, 300), 0.001, 0.999)     # overconfident-ish
    yt = (rng.random(200) < 0.3).astype(int)
    pt = np.clip(0.2 + 0.6 * yt + rng.normal(0, 0.2, 200), 0.001, 0.999)
    common = dict(model_name="ultrasound-vgg16-unfrozen", modality="ultrasound", sources=[f"s{i}" for i in range(200)],
                  patients=[f"p{i}" for i in range(200)], examples=tmp_path / "test",
                  threshold_from=tmp_path / "validation", bootstrap=50)
    good = evaluate.report(yv=yv, pv_raw=pv, y=yt, p_raw=pt, out=tmp_path / "a", **common)
    inverted = evaluate.report(yv=yv, pv_raw=pv, y=yt, p_raw=1 - pt, out=tmp_path / "b", **common)
    assert good["temperature"]["value"] == inverted["temperature"]["value"] == pytest.approx(stats.fit_temperature(yv, pv))
    assert good["threshold"] == inverted["threshold"]
    assert good["metrics"]["roc_auc"]["value"] > 0.9 > 0.1 > inverted["metrics"]["roc_auc"]["value"]
    other = evaluate.report(yv=yv, pv_raw=np.clip(pv ** 3, 0.001, 0.999), y=yt, p_raw=pt, out=tmp_path / "c", **common)
    assert other["temperature"]["value"] != pytest.approx(good["temperature"]["value"], rel=0.05)
