"""Per-modality image preprocessing that training and serving both apply, as TensorFlow ops.

The tf.data input pipeline and the exported SavedModel's signature call the same
:func:`model_input`, so a served image goes through exactly what the training images went
through (the report applied these in notebooks and again, differently, in the web app):
- every modality: decode, resize to the model's square size, and mono -> RGB last (the grey
  channel repeated, because ImageNet backbones take three channels);
- ultrasound: 3x3 median filter (speckle) and histogram equalization (contrast).
Backbone-specific scaling (``preprocess_input``) is not here: it is a layer of the model.
"""
from __future__ import annotations

import tensorflow as tf


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/BMP bytes -> uint8 HxWxC in the image's own channels: C = 1 for grayscale
    (alpha dropped), 3 for colour. Grayscale stays one channel through resizing, filtering and
    augmentation, which are per channel, so expanding it to RGB last gives the same pixels for
    a third of the work."""
    image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
    image = tf.cond(tf.shape(image)[-1] < 3, lambda: image[..., :1], lambda: image[..., :3])
    image.set_shape([None, None, None])
    return image


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """HxWx1 or HxWx3 -> HxWx3 (mono to RGB: the grey channel repeated, because ImageNet
    backbones take three channels)."""
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    image.set_shape([None, None, 3])
    return image


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/BMP bytes -> uint8 HxWx3."""
    return to_rgb(decode(image_bytes))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 HxWxC -> uint8 size x size x C; antialiased so downscaling keeps small structures."""
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def median3x3(image: tf.Tensor) -> tf.Tensor:
    """3x3 median of a uint8 HxWxC image, edges reflected."""
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="REFLECT")
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    shifted = tf.stack([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=-1)
    return tf.sort(shifted, axis=-1)[..., 4]


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalization of each channel of a uint8 HxWxC image (the classic CDF map)."""
    shape = tf.shape(image)
    values = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, shape[-1]]))        # C x N
    hist = tf.math.bincount(values, minlength=256, maxlength=256, axis=-1)              # C x 256
    cdf = tf.cumsum(hist, axis=1)
    cdf_min = tf.reduce_min(tf.where(cdf > 0, cdf, tf.reduce_max(cdf)), axis=1, keepdims=True)
    span = tf.cast(tf.maximum(tf.shape(values)[1] - cdf_min, 1), tf.float32)
    lut = tf.cast(tf.clip_by_value(tf.round(255.0 * tf.cast(cdf - cdf_min, tf.float32) / span), 0, 255), tf.uint8)
    equalized = tf.gather(lut, values, batch_dims=1)                                     # C x N
    return tf.reshape(tf.transpose(equalized), shape)


def prepare(image: tf.Tensor, modality: str, size: int) -> tf.Tensor:
    """uint8 HxWxC -> uint8 size x size x C, the modality's preprocessing applied (channels kept)."""
    from components.core import catalog

    image = resize(image, size)
    if catalog.modality(modality).despeckle:
        image = equalize(median3x3(image))
    return image


def model_input(image: tf.Tensor, modality: str, size: int) -> tf.Tensor:
    """uint8 HxWxC -> float32 size x size x 3 in [0, 255]: what the model's first layer takes."""
    return tf.cast(to_rgb(prepare(image, modality, size)), tf.float32)
