"""Backbones: ResNet50, VGG16, DenseNet121 from keras.applications with the report's head.

image (float32 0..255, RGB) -> BackbonePreprocess (the backbone's own scaling, a registered
layer so a saved model reloads without custom code) -> backbone -> global average pooling ->
dropout 0.5 -> dense 256 relu -> dropout 0.25 -> dense 1 sigmoid.

The backbone's layers are built flat into the model (not nested), so the unfreeze policy and
Grad-CAM can address them by name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import keras
from keras import layers, ops

from components import catalog


@dataclass(frozen=True)
class BackboneSpec:
    builder: str
    preprocessing: str          # keras.applications mode: "caffe" (BGR, mean) or "torch"
    unfreeze_from: str          # progressive stage 2 trains every layer from the first named so on
    last_conv: str              # Grad-CAM target


BACKBONES = {
    "resnet50": BackboneSpec("ResNet50", "caffe", "conv4", "conv5_block3_out"),
    "vgg16": BackboneSpec("VGG16", "caffe", "block5", "block5_conv3"),
    "densenet121": BackboneSpec("DenseNet121", "torch", "conv4", "relu"),
}
HEAD_LAYERS = ("head_pool", "head_dropout_1", "head_dense", "head_dropout_2", "probability")


@keras.saving.register_keras_serializable(package="bcimaging")
class BackbonePreprocess(layers.Layer):
    """keras.applications' ``preprocess_input`` for one backbone, as a serializable layer."""

    CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
    TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(self.CAFFE_MEAN_BGR, dtype=x.dtype)
        mean = ops.convert_to_tensor(self.TORCH_MEAN, dtype=x.dtype)
        std = ops.convert_to_tensor(self.TORCH_STD, dtype=x.dtype)
        return (x / 255.0 - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def resolve_weights(weights: str | None) -> str | None:
    """``imagenet`` (downloaded by Keras where the network allows), a weights-file path, or none."""
    if weights in (None, "", "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights {weights!r} is neither 'imagenet', 'none' nor an existing weights file")
    return weights


def build(backbone: str, image_size: int, weights: str | None = None, seed: int = 0) -> keras.Model:
    catalog.check_choice("backbone", backbone, catalog.BACKBONES)
    spec = BACKBONES[backbone]
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = BackbonePreprocess(spec.preprocessing, name="backbone_preprocess")(inputs)
    try:
        base = getattr(keras.applications, spec.builder)(include_top=False, weights=resolve_weights(weights),
                                                         input_tensor=x)
    except Exception as e:
        if weights == "imagenet":
            raise RuntimeError(f"could not get ImageNet weights for {backbone} ({e}); without network access "
                               "pass --weights PATH to a local notop .h5 file, or --weights none") from e
        raise
    x = layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    x = layers.Dropout(0.5, name="head_dropout_1")(x)
    x = layers.Dense(256, activation="relu", name="head_dense")(x)
    x = layers.Dropout(0.25, name="head_dropout_2")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="probability", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=backbone)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [l for l in model.layers if l.name not in HEAD_LAYERS and not isinstance(l, (keras.layers.InputLayer, BackbonePreprocess))]


def freeze_backbone(model: keras.Model) -> None:
    """Progressive stage 1: only the head trains."""
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_top(model: keras.Model, backbone: str) -> list[str]:
    """Progressive stage 2: the backbone's layers from ``unfreeze_from`` on train (conv4 + conv5
    for ResNet50 and DenseNet121, block5 for VGG16). BatchNormalization layers stay frozen (in
    inference mode), as Keras' fine-tuning guide advises: re-estimating their statistics from
    small medical batches destroys what the pretrained features rely on. Returns the names of
    the layers made trainable."""
    prefix = BACKBONES[backbone].unfreeze_from
    started, opened = False, []
    for layer in backbone_layers(model):
        started = started or layer.name.startswith(prefix)
        if started and not isinstance(layer, layers.BatchNormalization):
            layer.trainable = True
            opened.append(layer.name)
    return opened


def unfreeze_all(model: keras.Model) -> None:
    for layer in model.layers:
        layer.trainable = True
