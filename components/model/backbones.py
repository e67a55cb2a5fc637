"""Backbones: ResNet50, VGG16, DenseNet121 from keras.applications with the report's head.

image (float32 0..255, RGB) -> BackbonePreprocess (the backbone's own scaling, a registered
layer so a saved model reloads without custom code) -> backbone -> global average pooling ->
dropout 0.5 -> dense 256 relu -> dropout 0.25 -> dense 1 sigmoid.

Without pretrained weights (``weights=none``) three things change, because nothing then ties the
model to ImageNet's conventions and a few hundred images must train it from random:
- the input is scaled to [-1, 1] ("unit") instead of the ImageNet mean-subtracted 0..255
  ("caffe"), which starts VGG16 (no BatchNormalization) with activations of sane size;
- convolution kernels are He-initialized (Keras Applications use Glorot, which with ReLU halves
  the signal's power at every layer: 13 layers deep, VGG16's head then sees almost nothing);
- BatchNormalization's moving averages use momentum 0.9 instead of 0.99: a run of a few
  hundred steps otherwise validates with statistics that still remember the first batches
  (this is what made ResNet50 from scratch answer one constant);
- ResNet50's residual branches start at zero (the last BatchNormalization of each, gamma 0), so
  each block starts as the identity;
- VGG16 is built with BatchNormalization after every convolution (torchvision's ``vgg16_bn``):
  plain VGG16 has nothing that keeps its 13 stacked activations at a sane scale, and from
  scratch it collapsed in two of four study runs (every image answered about 0.50). The layer
  names stay VGG16's: ``block<b>_conv<c>`` is the activated output (as in Keras' VGG16, whose
  convolutions carry their ReLU), its parts ``..._conv`` and ``..._bn``.

The backbone's layers are built flat into the model (not nested), so the unfreeze policy and
Grad-CAM can address them by name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import keras
from keras import layers, ops

from components.core import catalog


@dataclass(frozen=True)
class BackboneSpec:
    builder: str
    preprocessing: str          # keras.applications mode: "caffe" (BGR, mean) or "torch"
    unfreeze_from: str          # progressive stage 2 trains every layer from the first named so on
    last_conv: str              # Grad-CAM target
    # from scratch, the peak learning rate is the configured one times this
    scratch_learning_rate_scale: float = 1.0


BACKBONES = {
    "resnet50": BackboneSpec("ResNet50", "caffe", "conv4", "conv5_block3_out"),
    "vgg16": BackboneSpec("VGG16", "caffe", "block5", "block5_conv3"),
    "densenet121": BackboneSpec("DenseNet121", "torch", "conv4", "relu"),
}
# ResNet50's last BatchNormalization in each residual branch (conv2_block1_3_bn, ...): from
# scratch it starts at gamma 0, so every block starts as the identity and the 16-block network
# trains like a shallow one first (Goyal et al. 2017, "zero-gamma")
RESIDUAL_LAST_BN = "_3_bn"
HEAD_LAYERS = ("head_pool", "head_dropout_1", "head_dense", "head_dropout_2", "probability")
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))    # (filters, convolutions) per block


def vgg16_bn(x):
    """VGG16's convolutional part with BatchNormalization after every convolution (from scratch
    only: ImageNet's VGG16 weights have no such layers)."""
    for b, (filters, convs) in enumerate(VGG16_BLOCKS, start=1):
        for c in range(1, convs + 1):
            name = f"block{b}_conv{c}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.Activation("relu", name=name)(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    return x


@keras.saving.register_keras_serializable(package="bcimaging")
class BackbonePreprocess(layers.Layer):
    """keras.applications' ``preprocess_input`` for one backbone, as a serializable layer."""

    MODES = ("caffe", "torch", "unit")
    CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
    TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "unit":
            return x / 127.5 - 1.0
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


def build(backbone: str, image_size: int | None, weights: str | None = None, seed: int = 0) -> keras.Model:
    """The backbone with the report's head. ``image_size`` None builds a model that takes any
    square size (progressive resizing trains one model at two sizes)."""
    catalog.check_choice("backbone", backbone, catalog.BACKBONES)
    spec = BACKBONES[backbone]
    keras.utils.set_random_seed(seed)
    pretrained = resolve_weights(weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = BackbonePreprocess(spec.preprocessing if pretrained else "unit", name="backbone_preprocess")(inputs)
    if backbone == "vgg16" and pretrained is None:
        features = vgg16_bn(x)
    else:
        try:
            features = getattr(keras.applications, spec.builder)(include_top=False, weights=pretrained,
                                                                 input_tensor=x).output
        except Exception as e:
            if weights == "imagenet":
                raise RuntimeError(f"could not get ImageNet weights for {backbone} ({e}); without network access "
                                   "pass --weights PATH to a local notop .h5 file, or --weights none") from e
            raise
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = layers.Dropout(0.5, name="head_dropout_1")(x)
    x = layers.Dense(256, activation="relu", name="head_dense")(x)
    x = layers.Dropout(0.25, name="head_dropout_2")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="probability", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=backbone)
    if pretrained is None:
        _init_for_scratch(model, seed)
    return model


def _init_for_scratch(model: keras.Model, seed: int) -> None:
    """He-normal convolution kernels and BatchNormalization momentum 0.9 (see the module doc)."""
    for i, layer in enumerate(model.layers):
        if isinstance(layer, layers.Conv2D):
            init = keras.initializers.HeNormal(seed=seed * 1000 + i)
            layer.kernel.assign(init(layer.kernel.shape, dtype=layer.kernel.dtype))
        elif isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
            if layer.name.endswith(RESIDUAL_LAST_BN):
                layer.gamma.assign(ops.zeros_like(layer.gamma))


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
