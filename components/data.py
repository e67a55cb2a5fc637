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
    """Random flip, +-10 degree rotation, zoom 0.1 and brightness (the report's schedule);
    HSV jitter for histopathology (stain variation the Macenko step does not cover)."""
    import keras

    geometric = keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(10 / 360, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
    ], name="augment")

    def augment(images):
        images = geometric(images, training=True)
        if modality == "histopathology":
            images = tf.image.random_hue(images / 255.0, 0.05, seed=seed + 4)
            images = tf.image.random_saturation(images, 0.9, 1.1, seed=seed + 5)
            images = tf.clip_by_value(tf.image.random_brightness(images, 0.1, seed=seed + 6), 0, 1) * 255.0
        return images

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

    def parse(raw):
        f = tf.io.parse_single_example(raw, spec)
        image = preprocess.model_input(preprocess.decode_rgb(f[schema.IMAGE]), modality, image_size)
        label = tf.cast(f[schema.LABEL], tf.float32)
        return (image, label, f[schema.SOURCE], f[schema.PATIENT]) if with_ids else (image, label)

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=not training)
    ds = ds.batch(batch_size, drop_remainder=False)
    if training:
        augment = augmenter(modality, seed)
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.prefetch(AUTOTUNE)


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
