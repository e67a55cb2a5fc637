"""tf.data input from the splits' TFRecords: parallel read and decode, the shared
preprocessing (components.preprocess), per-modality augmentation, batching and prefetch."""
from __future__ import annotations

import math
from pathlib import Path

import tensorflow as tf

from components import preprocess, schema
from components.records import compression, tfrecord_files

AUTOTUNE = tf.data.AUTOTUNE


def _files(split_dir: str | Path) -> tuple[list[str], str]:
    files = tfrecord_files(split_dir)
    if not files:
        raise FileNotFoundError(f"no TFRecord files in {split_dir}")
    kinds = {compression(f) for f in files}
    if len(kinds) != 1:
        raise ValueError(f"{split_dir} mixes gzip and plain TFRecord files")
    return [str(f) for f in files], kinds.pop()


def augmenter(modality: str, seed: int):
    """A per-image function: random horizontal flip, +-10 degree rotation, zoom 0.9-1.1 and
    +-10 % brightness (the report's schedule) on uint8 HxWxC (any channels) -> float32; then,
    for histopathology, HSV jitter on the RGB result (stain variation the Macenko step does not
    cover). Flip, rotation and zoom are one affine warp, so each image is resampled once
    (Keras' separate RandomFlip/RandomRotation/RandomZoom layers resample it three times,
    which was most of the input pipeline's time)."""
    rng = tf.random.Generator.from_seed(seed)

    def augment(image):
        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        angle = rng.uniform([], -10.0, 10.0) * (3.141592653589793 / 180.0)
        zoom = rng.uniform([], 0.9, 1.1)
        flip = tf.where(rng.uniform([]) < 0.5, -1.0, 1.0)
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        # output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
        a0, a1, b0, b1 = flip * cos, sin, -flip * sin, cos
        transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])[None]
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(image, tf.float32)[None], transforms=transform, output_shape=shape[:2],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]
        warped = tf.clip_by_value(warped + rng.uniform([], -25.5, 25.5), 0.0, 255.0)
        rgb = preprocess.to_rgb(warped)
        if modality == "histopathology":
            rgb = tf.image.random_hue(rgb / 255.0, 0.05, seed=seed + 4)
            rgb = tf.clip_by_value(tf.image.random_saturation(rgb, 0.9, 1.1, seed=seed + 5), 0.0, 1.0) * 255.0
        return rgb

    return augment


def dataset(split_dir: str | Path, modality: str, image_size: int, batch_size: int, training: bool,
            seed: int = 0, with_ids: bool = False) -> tf.data.Dataset:
    """(images float32 [B, S, S, 3] in 0..255, labels float32 [B]) batches; with ids, also
    (source_id, patient_id) for evaluation reports."""
    files, kind = _files(split_dir)
    spec = {k: v for k, v in schema.feature_spec().items() if k in (schema.IMAGE, schema.LABEL, schema.SOURCE, schema.PATIENT)}
    ds = tf.data.TFRecordDataset(files, compression_type=kind, num_parallel_reads=min(len(files), 8))
    if training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)

    augment = augmenter(modality, seed) if training else None

    def parse(raw):
        f = tf.io.parse_single_example(raw, spec)
        image = preprocess.decode(f[schema.IMAGE])
        if augment is None:
            image = preprocess.model_input(image, modality, image_size)
        else:
            image = augment(preprocess.prepare(image, modality, image_size))
        label = tf.cast(f[schema.LABEL], tf.float32)
        return (image, label, f[schema.SOURCE], f[schema.PATIENT]) if with_ids else (image, label)

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not training)
    return ds.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def count_labels(split_dir: str | Path) -> tuple[int, int]:
    """(negatives, positives) of a split, reading only the label feature."""
    files, kind = _files(split_dir)
    spec = {schema.LABEL: tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(files, compression_type=kind).batch(1024).map(
        lambda raw: tf.io.parse_example(raw, spec)[schema.LABEL])
    labels = tf.concat(list(ds), axis=0) if files else tf.zeros([0], tf.int64)
    positives = int(tf.reduce_sum(labels))
    return int(labels.shape[0]) - positives, positives


def steps(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
