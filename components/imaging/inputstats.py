"""Cheap statistics of one input image, and their histograms: what drift detection compares.

The split computes them on the train records (``manifest.json``: ``input_reference``), the
evaluation adds the distribution of the calibrated validation probabilities, the export puts
both in the model card, and the gateway keeps the same histograms (Prometheus, the same bucket
edges) of what it serves, per model and version. No image and nothing identifying is kept:
four numbers per image, counted into buckets. ``pipelines.monitoring.drift`` compares the two.

- ``pixels``: height x width as received;
- ``channels``: 1 for grayscale (also a gray image stored as RGB), 3 for colour;
- ``mean`` and ``spread``: the mean and standard deviation of the gray intensity (0..255).
"""
from __future__ import annotations

import numpy as np

FEATURES = ("pixels", "channels", "mean", "spread")
# bucket upper bounds (Prometheus' "le"); +Inf is implied
BUCKETS = {
    "pixels": tuple(float(v) for v in np.geomspace(1_000, 64_000_000, 17).round(0)),
    "channels": (1.5, 2.5, 3.5),
    "mean": tuple(float(v) for v in np.linspace(16, 256, 16)),
    "spread": tuple(float(v) for v in np.linspace(8, 128, 16)),
    "probability": tuple(float(v) for v in np.linspace(0.05, 1.0, 20).round(2)),
}
SAMPLE = 256       # statistics from at most SAMPLE x SAMPLE pixels (a strided view): microseconds


def of(pixels: np.ndarray) -> dict[str, float]:
    """The statistics of one decoded image (uint8, HxW or HxWxC)."""
    h, w = pixels.shape[:2]
    step = max(1, max(h, w) // SAMPLE)
    view = pixels[::step, ::step].astype(np.float32)
    colour = view.ndim == 3 and view.shape[-1] >= 3 and not (
        np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 0], view[..., 2]))
    gray = view[..., :3].mean(axis=-1) if view.ndim == 3 else view
    return {"pixels": float(h * w), "channels": 3.0 if colour else 1.0, "mean": float(gray.mean()),
            "spread": float(gray.std())}


def counts(values, feature: str) -> list[int]:
    """How many values fall in each bucket of ``feature`` (the last bucket is above the top edge)."""
    edges = BUCKETS[feature]
    index = np.searchsorted(np.asarray(edges), np.asarray(values, dtype=float), side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(int).tolist()


def reference(stats: list[dict[str, float]]) -> dict:
    """The histograms of many images' statistics: ``{feature: {"buckets": [...], "counts": [...]}}``."""
    return {f: {"buckets": list(BUCKETS[f]), "counts": counts([s[f] for s in stats], f)} for f in FEATURES}
