"""Backbones: which layers train in each stage of each strategy, weights, serialization."""
import h5py
import keras
import numpy as np
import pytest

from components.core import catalog
from components.model import backbones


def _trainable(model):
    return {l.name for l in model.layers if l.trainable and l.weights}


@pytest.mark.parametrize("backbone", catalog.BACKBONES)
def test_progressive_stages_open_exactly_the_top_blocks(backbone):
    model = backbones.build(backbone, 32)
    head = {"head_dense", "probability"}
    backbones.freeze_backbone(model)
    assert _trainable(model) == head                                  # stage 1: head only
    opened = set(backbones.unfreeze_top(model, backbone))
    stage2 = _trainable(model)
    prefix = {"resnet50": ("conv4", "conv5"), "densenet121": ("conv4", "conv5", "pool4", "bn"),
              "vgg16": ("block5",)}[backbone]
    assert stage2 - head == {n for n in opened if model.get_layer(n).weights}
    for name in stage2 - head:
        assert name.startswith(prefix), name                          # nothing below conv4 / block5
    frozen_conv = [l.name for l in backbones.backbone_layers(model)
                   if isinstance(l, keras.layers.Conv2D) and not l.trainable]
    assert frozen_conv and not any(n.startswith(prefix[0]) for n in frozen_conv)
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in stage2)
    if backbone == "vgg16":     # from scratch the BatchNormalization variant: convolutions are <name>_conv
        assert sorted(stage2 - head) == ["block5_conv1_conv", "block5_conv2_conv", "block5_conv3_conv"]


@pytest.mark.parametrize("backbone", catalog.BACKBONES)
def test_unfrozen_trains_every_layer(backbone):
    model = backbones.build(backbone, 32)
    backbones.freeze_backbone(model)
    backbones.unfreeze_all(model)
    with_weights = [l for l in model.layers if l.weights]
    assert all(l.trainable for l in with_weights)
    assert len(model.trainable_weights) == len([w for w in model.weights if w.trainable]) > 0
    assert sum(np.prod(w.shape) for w in model.trainable_weights) == model.count_params() - sum(
        np.prod(w.shape) for w in model.non_trainable_weights)


def test_preprocessing_is_inside_the_graph_and_survives_save_and_load(tmp_path):
    model = backbones.build("densenet121", 32, seed=3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert np.allclose(model(x), reloaded(x), atol=1e-6)
    assert isinstance(reloaded.get_layer("backbone_preprocess"), backbones.BackbonePreprocess)


def test_caffe_and_torch_preprocessing_match_keras_applications():
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    caffe = backbones.BackbonePreprocess("caffe")(x)
    torch = backbones.BackbonePreprocess("torch")(x)
    assert np.allclose(caffe, keras.applications.resnet50.preprocess_input(x.copy()), atol=1e-4)
    assert np.allclose(torch, keras.applications.densenet.preprocess_input(x.copy()), atol=1e-5)


def test_weights_from_a_legacy_h5_file(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for w in base.weights:
        w.assign(np.random.default_rng(0).normal(size=w.shape).astype("float32") * 0.01)
    path = tmp_path / "vgg16_notop.h5"          # the layout of Keras' downloadable notop files
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    model = backbones.build("vgg16", 32, str(path))
    for name in ("block1_conv1", "block5_conv3"):
        assert np.array_equal(model.get_layer(name).get_weights()[0], base.get_layer(name).get_weights()[0])


def test_bad_weights_argument_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither 'imagenet', 'none' nor an existing weights file"):
        backbones.build("resnet50", 32, "/no/such/weights.h5")
