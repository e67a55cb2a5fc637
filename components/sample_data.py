"""Small deterministic synthetic datasets, written in each modality's real source format.

They exist so the demo and the tests run anywhere (no dataset download): each carries a
class signal a CNN learns in a few epochs at 32 px, built from the modality's real cues:
- mammography: a bright mass or calcification cluster on fibroglandular texture (DDSM TFRecord);
- ultrasound: a dark lesion with posterior acoustic shadowing (malignant) or enhancement
  (benign) on speckle, or plain tissue layers (normal), as PNG/JPEG/BMP, gray or RGB, mixed sizes;
- histopathology: dense hematoxylin-rich nuclei (IDC+) or eosin stroma (IDC-), each patient
  with its own stain (so stain normalization has work to do), as the IDC patient tree.

    python -m components.sample_data --modality M --out DIR [--count N] [--seed S]
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from components.core import catalog, cli
from components.core.atomic import staged_dir

DEFAULT_COUNT = 120


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random grid upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
    a = np.asarray(img)
    return (a - a.min()) / (np.ptp(a) + 1e-6)


def _disk(shape, cy, cx, ry, rx, jag: float = 0.0, rng=None) -> np.ndarray:
    """Soft elliptical mask; ``jag`` > 0 makes the border irregular (spiculated)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.ones_like(angle)
    if jag:
        for k in (5, 7, 11):
            radius += jag * rng.uniform(0.3, 1.0) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) / radius
    return np.clip(1.5 - d * 1.5, 0, 1) ** 0.7


# ------------------------------------------------------------------------------ mammography
def mammogram(rng: np.random.Generator, label: int, side: int = 299) -> np.ndarray:
    tissue = 70 + 90 * _smooth_noise(rng, (side, side), 6) + 25 * _smooth_noise(rng, (side, side), 24)
    img = tissue + rng.normal(0, 6, (side, side))
    if label in (2, 4):   # mass, centred as in DDSM ROI patches; malignant ones spiculated
        r = rng.uniform(0.16, 0.26) * side
        c = side / 2 + rng.normal(0, side * 0.05, 2)
        img += 80 * _disk((side, side), c[0], c[1], r, r * rng.uniform(0.8, 1.2), jag=0.25 if label == 4 else 0.0, rng=rng)
    elif label in (1, 3):  # calcification cluster: many bright specks in a region
        c = side / 2 + rng.normal(0, side * 0.05, 2)
        for _ in range(rng.integers(25, 45)):
            p = c + rng.normal(0, side * 0.09, 2)
            img += 110 * _disk((side, side), p[0], p[1], 5, 5)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_mammography(out: Path, count: int, rng: np.random.Generator) -> None:
    import tensorflow as tf
    from tensorflow.core.example import example_pb2, feature_pb2

    labels = rng.choice([0, 1, 2, 3, 4], size=count, p=[0.65, 0.06, 0.12, 0.05, 0.12])
    with tf.io.TFRecordWriter(str(out / "training10_0.tfrecords")) as writer:
        for label in labels:
            pixels = mammogram(rng, int(label))
            feature = {
                "label": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(label)])),
                "label_normal": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(label > 0)])),
                "image": feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[pixels.tobytes()])),
            }
            writer.write(example_pb2.Example(features=feature_pb2.Features(feature=feature)).SerializeToString())


# ------------------------------------------------------------------------------- ultrasound
def ultrasound(rng: np.random.Generator, cls: str, h: int, w: int) -> np.ndarray:
    depth = np.linspace(1.0, 0.55, h, dtype=np.float32)[:, None]          # attenuation with depth
    layers = 0.6 + 0.4 * _smooth_noise(rng, (h, w), 5)
    speckle = rng.rayleigh(0.5, (h, w)).astype(np.float32)
    img = 150 * depth * layers * speckle
    if cls != "normal":
        cy, cx = rng.uniform(0.35, 0.55) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.12, 0.18) * h, rng.uniform(0.15, 0.25) * w
        lesion = _disk((h, w), cy, cx, ry, rx, jag=0.3 if cls == "malignant" else 0.0, rng=rng)
        img *= 1 - 0.85 * lesion
        below = np.zeros((h, w), np.float32)                               # posterior band
        cols = np.abs(np.arange(w) - cx) < rx * 0.8
        below[int(cy + ry):, cols] = 1.0
        img *= (1 - 0.7 * below) if cls == "malignant" else (1 + 0.6 * below)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_ultrasound(out: Path, count: int, rng: np.random.Generator) -> None:
    classes = rng.choice(["benign", "malignant", "normal"], size=count, p=[0.45, 0.4, 0.15])
    for i, cls in enumerate(classes):
        h, w = int(rng.integers(160, 320)), int(rng.integers(160, 320))
        pixels = ultrasound(rng, str(cls), h, w)
        image = Image.fromarray(pixels)
        if i % 3 == 1:                       # some frames stored as RGB, like BUSI
            image = image.convert("RGB")
        fmt, ext = [("PNG", "png"), ("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp")][i % 4]
        folder = out / str(cls)
        folder.mkdir(exist_ok=True)
        buf = io.BytesIO()
        image.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        (folder / f"{cls} ({i + 1}).{ext}").write_bytes(buf.getvalue())


# --------------------------------------------------------------------------- histopathology
H_STAIN = np.array([0.65, 0.70, 0.29], np.float32)   # hematoxylin optical density (Ruifrok)
E_STAIN = np.array([0.07, 0.99, 0.11], np.float32)   # eosin


def he_patch(rng: np.random.Generator, label: int, h_vec: np.ndarray, e_vec: np.ndarray,
             size: tuple[int, int] = (50, 50)) -> np.ndarray:
    e = 0.25 + 0.35 * _smooth_noise(rng, size, 6)
    hmap = np.zeros(size, np.float32)
    n_nuclei = rng.integers(14, 22) if label else rng.integers(1, 4)
    for _ in range(n_nuclei):
        r = rng.uniform(2.5, 4.5) if label else rng.uniform(1.5, 2.5)
        hmap += _disk(size, rng.uniform(0, size[0]), rng.uniform(0, size[1]), r, r * rng.uniform(0.7, 1.3))
    hmap = np.clip(hmap, 0, 1) * (1.1 if label else 0.8) + 0.05
    od = hmap[..., None] * h_vec + e[..., None] * e_vec + rng.normal(0, 0.02, size + (3,))
    return np.clip(255 * np.exp(-np.clip(od, 0, None)), 0, 255).astype(np.uint8)


def _stain(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    v = np.clip(base + rng.normal(0, 0.08, 3), 0.01, None)
    return (v / np.linalg.norm(v)).astype(np.float32) * rng.uniform(0.8, 1.25)


def write_histopathology(out: Path, count: int, rng: np.random.Generator) -> None:
    n_patients = int(np.clip(count // 10, 4, 20))
    patients = [str(10250 + 17 * k) for k in range(n_patients)]
    assignment = rng.integers(0, n_patients, count)
    assignment[:n_patients] = np.arange(n_patients)                   # every patient has patches
    for k, patient in enumerate(patients):
        h_vec, e_vec = _stain(rng, H_STAIN), _stain(rng, E_STAIN)
        prevalence = rng.uniform(0.25, 0.6)
        n = int((assignment == k).sum())
        labels = (rng.random(n) < prevalence).astype(int)
        labels[:2] = [0, 1][: n] if n >= 2 else labels[:2]            # both classes when possible
        for j, label in enumerate(labels):
            size = (50, 50) if j % 7 else (42, 50)                     # slide-border patches are smaller
            pixels = he_patch(rng, int(label), h_vec, e_vec, size)
            folder = out / patient / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            x, y = 1001 + 50 * (j % 40), 1001 + 50 * (j // 40)
            Image.fromarray(pixels).save(folder / f"{patient}_idx5_x{x}_y{y}_class{label}.png")


WRITERS = {"mammography": write_mammography, "ultrasound": write_ultrasound,
           "histopathology": write_histopathology}


def run(modality: str, out: str | Path, count: int = DEFAULT_COUNT, seed: int = 0) -> Path:
    catalog.modality(modality)
    if count < 12:
        raise ValueError(f"--count {count} is too small: a 70/15/15 split with both classes needs at least 12 images")
    with staged_dir(out) as stage:
        WRITERS[modality](stage, count, np.random.default_rng([seed, count, list(catalog.MODALITIES).index(modality)]))
    return Path(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.sample_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT)
    ap.add_argument("--seed", type=int, default=0)
    return ap


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), lambda a, _: print(run(a.modality, a.out, a.count, a.seed))))
