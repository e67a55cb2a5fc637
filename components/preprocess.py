"""Per-modality image preprocessing that training and serving both apply, as TensorFlow ops.

The tf.data input pipeline and the exported SavedModel's signature call the same
:func:`model_input`, so a served image goes through exactly what the training images went
through (the report applied these in notebooks and again, differently, in the web app):
- every modality: decode to RGB (mono -> RGB for mammography: the grey channel repeated,
  because ImageNet backbones take three channels), resize to the model's square size;
- ultrasound: 3x3 median filter (speckle) and histogram equalization (contrast).
Backbone-specific scaling (``preprocess_input``) is not here: it is a layer of the model.
"""
from __future__ import annotations

import tensorflow as tf


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG/BMP/GIF bytes -> uint8 HxWx3 (grayscale repeated to three channels)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 HxWx3 -> uint8 size x size x 3; antialiased so downscaling keeps small structures."""
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
    def channel(values):
        values = tf.reshape(tf.cast(values, tf.int32), [-1])
        hist = tf.math.bincount(values, minlength=256, maxlength=256)
        cdf = tf.cumsum(hist)
        cdf_min = tf.reduce_min(tf.boolean_mask(cdf, cdf > 0))
        span = tf.maximum(tf.size(values) - cdf_min, 1)
        lut = tf.cast(tf.clip_by_value(tf.round(255.0 * tf.cast(cdf - cdf_min, tf.float32)
                                                / tf.cast(span, tf.float32)), 0, 255), tf.uint8)
        return tf.gather(lut, values)

    channels = tf.unstack(image, num=3, axis=-1)
    return tf.reshape(tf.stack([channel(c) for c in channels], axis=-1), tf.shape(image))


def model_input(image: tf.Tensor, modality: str, size: int) -> tf.Tensor:
    """uint8 HxWx3 -> float32 size x size x 3 in [0, 255], the modality's preprocessing applied."""
    image = resize(image, size)
    if modality == "ultrasound":
        image = equalize(median3x3(image))
    return tf.cast(image, tf.float32)
