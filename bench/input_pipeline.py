"""Training input throughput at 224 px, measured side by side:

1. this product's tf.data pipeline: TFRecords -> parallel decode -> modality preprocessing ->
   augmentation (flip, rotation, zoom, brightness) -> batch -> prefetch;
2. the report's approach: every image decoded and resized into one in-memory array first,
   then Keras' ImageDataGenerator (Python/scipy per-image augmentation), the class the
   report's notebooks used (Keras 3 keeps it as keras.src.legacy);
3. what one training step of each backbone consumes (images/s of ``train_on_batch`` on a
   fixed batch), i.e. the rate the input must sustain never to starve the model.

Data: ../shared/datasets (DDSM-layout mammography, 299 px) when present, else sample data.

    python -m bench [--modality mammography] [--batches 30] [--batch-size 32] [--backbones ...]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
REAL_SOURCES = {"mammography": "ddsm", "ultrasound": "busi", "histopathology": "idc"}


def prepare(modality: str, work: Path) -> Path:
    """Extracted TFRecords of the real dataset (or sample data) for ``modality``."""
    from components import extract, sample_data

    source = SHARED / REAL_SOURCES[modality]
    if not source.exists():
        source = sample_data.run(modality, work / "source", count=400)
    extract.run(modality, source, work / "examples")
    return work / "examples"


def rate(batches, n_batches: int, warmup: int = 3) -> float:
    """Images per second over ``n_batches`` after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(n_batches):
        x = next(it)[0]
        images += int(x.shape[0])
    return images / (time.perf_counter() - start)


def ours(examples: Path, modality: str, size: int, batch_size: int, n_batches: int) -> float:
    from components.model import inputs

    ds = inputs.dataset(examples, modality, size, batch_size, training=True).repeat()
    return rate(ds, n_batches)


def report_style(examples: Path, modality: str, size: int, batch_size: int, n_batches: int) -> tuple[float, float]:
    """(images/s of the generator, seconds spent loading everything into memory first)."""
    import cv2
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    from components.data import records, schema

    start = time.perf_counter()
    recs = [schema.deserialize(r) for r in records.read_records(examples)]
    x = np.empty((len(recs), size, size, 3), np.uint8)       # the report's pre-allocated block
    for i, r in enumerate(recs):
        img = cv2.imdecode(np.frombuffer(r.image_png, np.uint8), cv2.IMREAD_COLOR)
        x[i] = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
    y = np.array([r.label for r in recs], np.float32)
    load_seconds = time.perf_counter() - start
    gen = ImageDataGenerator(rotation_range=10, zoom_range=0.10, horizontal_flip=True, brightness_range=(0.95, 1.05))
    return rate(gen.flow(x, y, batch_size=batch_size, seed=0), n_batches), load_seconds


def train_step_rate(backbone: str, size: int, batch_size: int, steps: int = 5) -> float:
    import keras

    from components.model import backbones

    model = backbones.build(backbone, size)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    y = (np.arange(batch_size) % 2).astype("float32")
    model.train_on_batch(x, y)                                  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    keras.backend.clear_session()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", default="mammography", choices=list(REAL_SOURCES))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--backbones", nargs="*", default=["resnet50", "vgg16", "densenet121"])
    args = ap.parse_args(argv)
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, devices: {[d.device_type for d in tf.config.list_physical_devices()]}")
    with tempfile.TemporaryDirectory() as tmp:
        examples = prepare(args.modality, Path(tmp))
        size, bs, n = args.image_size, args.batch_size, args.batches
        ours_rate = ours(examples, args.modality, size, bs, n)
        report_rate, load_s = report_style(examples, args.modality, size, bs, n)
    print(f"\ninput pipeline, {args.modality}, {size} px, batch {bs}, {n} batches after warm-up")
    print(f"  ours (tf.data from TFRecords, augmented)     {ours_rate:8.1f} images/s")
    print(f"  report (in-memory + ImageDataGenerator)      {report_rate:8.1f} images/s"
          f"   (+{load_s:.1f} s to load every image into memory first)")
    print(f"  ratio ours / report                          {ours_rate / report_rate:8.2f}x   (target >= 3x)")
    print(f"\ntrain-step consumption, {size} px, batch {bs}")
    for backbone in args.backbones:
        step = train_step_rate(backbone, size, bs)
        print(f"  {backbone:<12} consumes {step:8.1f} images/s;  input pipeline / consumption = "
              f"{ours_rate / step:6.1f}x" + ("   (target >= 5x)" if backbone == "resnet50" else ""))
    return 0
