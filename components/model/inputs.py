"""tf.data input from the splits' TFRecords: parallel read and decode, the shared
preprocessing (components.model.preprocess), per-modality augmentation, batching and prefetch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from components.core import catalog
from components.model import preprocess
from components.data import schema
from components.data.records import compression, tfrecord_files

AUTOTUNE = tf.data.AUTOTUNE


def _files(split_dir: str | Path) -> tuple[list[str], str]:
    files = tfrecord_files(split_dir)
    if not files:
        raise FileNotFoundError(f"no TFRecord files in {split_dir}")
    kinds = {compression(f) for f in files}
    if len(kinds) != 1:
        raise ValueError(f"{split_dir} mixes gzip and plain TFRecord files")
    return [str(f) for f in files], kinds.pop()


@dataclass(frozen=True)
class Augmentation:
    """A random-augmentation policy, applied per image on the training split only."""
    rotate_deg: float = 10.0          # uniform +- this
    zoom: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.0            # uniform +- this fraction of the side, each axis
    vertical_flip: bool = False       # besides the horizontal flip every policy but "none" has
    quarter_turns: bool = False       # rotate by k x 90 degrees too (no up/down in the image)
    brightness: float = 25.5          # +- on the 0..255 scale
    contrast: float = 0.0             # x uniform 1 +- this, around the image mean
    stain_jitter: bool = False        # hue +-0.05 and saturation x0.9-1.1 (H&E colour variation)
    horizontal_flip: bool = True


AUGMENTATIONS = {
    "none": Augmentation(rotate_deg=0.0, zoom=(1.0, 1.0), brightness=0.0, horizontal_flip=False),
    # the report's schedule: flip, +-10 degrees, zoom 0.9-1.1, +-10 % brightness
    "report": Augmentation(),
    # B-mode frames have a top (the probe) but no left/right: no vertical flips or quarter
    # turns; the lesion may sit anywhere, and gain differs between machines
    "ultrasound": Augmentation(rotate_deg=12.0, zoom=(0.85, 1.2), translate=0.08, contrast=0.2),
    # ROI crops and tissue tiles have no orientation at all: the whole dihedral group
    "dihedral": Augmentation(rotate_deg=15.0, zoom=(0.85, 1.15), translate=0.05, vertical_flip=True,
                             quarter_turns=True, contrast=0.15),
    "histology": Augmentation(rotate_deg=15.0, zoom=(0.9, 1.1), translate=0.05, vertical_flip=True,
                              quarter_turns=True, contrast=0.1, stain_jitter=True),
}


def augmentation(name: str) -> Augmentation:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}") from None


# the uniforms one augmentation draws, in this order
_DRAWS = ("angle", "quarter", "zoom", "flip_x", "flip_y", "dx", "dy", "contrast", "brightness", "hue", "saturation")


def augmenter(policy: str | Augmentation):
    """A per-image function (uint8 HxWxC image (any channels), int64 [2] stateless seed) ->
    float32 HxWx3 applying ``policy``. Every random number is a stateless function of the
    image's seed (``dataset`` gives each element its own, new each epoch, the same in every
    run), so the augmentation is the same on every run whatever the order parallel map calls
    finish in. Flips, rotation, quarter turns, zoom and shift are one affine warp, so each
    image is resampled once (Keras' separate RandomFlip/RandomRotation/RandomZoom layers
    resample it three times, which was most of the input pipeline's time); grayscale is warped
    on its one channel and expanded to RGB last."""
    a = augmentation(policy) if isinstance(policy, str) else policy

    def augment(image, seed):
        u = dict(zip(_DRAWS, tf.unstack(tf.random.stateless_uniform([len(_DRAWS)], seed=seed))))

        def between(name, low, high):
            return low + (high - low) * u[name]

        def sign(name, enabled: bool):
            return tf.where(u[name] < 0.5, -1.0, 1.0) if enabled else tf.constant(1.0)

        shape = tf.shape(image)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        angle = between("angle", -a.rotate_deg, a.rotate_deg) * (math.pi / 180.0)
        if a.quarter_turns:
            angle += tf.floor(u["quarter"] * 4.0) * (math.pi / 2)
        zoom = between("zoom", a.zoom[0], a.zoom[1])
        fx, fy = sign("flip_x", a.horizontal_flip), sign("flip_y", a.vertical_flip)
        dx = between("dx", -a.translate, a.translate) * w
        dy = between("dy", -a.translate, a.translate) * h
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        # output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
        a0, a1, b0, b1 = fx * cos, fy * sin, -fx * sin, fy * cos
        transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy + dx, b0, b1, cy - b0 * cx - b1 * cy + dy, 0.0, 0.0])[None]
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(image, tf.float32)[None], transforms=transform, output_shape=shape[:2],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]
        if a.contrast:
            mean = tf.reduce_mean(warped)
            warped = (warped - mean) * between("contrast", 1.0 - a.contrast, 1.0 + a.contrast) + mean
        warped = tf.clip_by_value(warped + between("brightness", -a.brightness, a.brightness), 0.0, 255.0)
        rgb = preprocess.to_rgb(warped)
        if a.stain_jitter:
            rgb = tf.image.adjust_hue(rgb / 255.0, between("hue", -0.05, 0.05))
            rgb = tf.clip_by_value(tf.image.adjust_saturation(rgb, between("saturation", 0.9, 1.1)), 0.0, 1.0) * 255.0
        return rgb

    return augment


def dataset(split_dir: str | Path, modality: str, image_size: int, batch_size: int, training: bool,
            seed: int = 0, with_ids: bool = False, augment_with: str | None = None) -> tf.data.Dataset:
    """(images float32 [B, S, S, 3] in 0..255, labels float32 [B]) batches; with ids, also
    (source_id, patient_id, source) for evaluation reports. Training batches are shuffled and
    augmented with the policy ``augment_with`` (default: the modality's).

    The same files and seed give the same batches on every run: records are read in file order
    (the split writes them sorted), the shuffle is seeded, each element draws its augmentation
    from a stateless seed of its own (a seeded random stream, new each epoch), and the parallel
    map keeps the input order."""
    files, kind = _files(split_dir)
    spec = {k: v for k, v in schema.feature_spec().items()
            if k in (schema.IMAGE, schema.LABEL, schema.SOURCE_ID, schema.PATIENT, schema.SOURCE)}
    ds = tf.data.TFRecordDataset(files, compression_type=kind, num_parallel_reads=min(len(files), 8))
    policy = augment_with or catalog.modality(modality).augmentation
    augment = augmenter(policy) if training and policy != "none" else None
    if training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds))

    def parse(raw, element_seed=None):
        f = tf.io.parse_single_example(raw, spec)
        image = preprocess.decode(f[schema.IMAGE])
        if augment is None:
            image = preprocess.model_input(image, modality, image_size)
        else:
            image = augment(preprocess.prepare(image, modality, image_size), element_seed)
        label = tf.cast(f[schema.LABEL], tf.float32)
        return (image, label, f[schema.SOURCE_ID], f[schema.PATIENT], f[schema.SOURCE]) if with_ids else (image, label)

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # each map call's ops on one thread: an image's reductions (the contrast's mean) then add up
    # in the same order whatever the machine's core count (parallel calls still use every core)
    options.threading.max_intra_op_parallelism = 1
    return ds.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE).with_options(options)


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
