"""Macenko H&E stain normalization (Macenko et al., 2009), in numpy for the stain step and as
TensorFlow ops for the serving graph, so a served tile is normalized exactly as the training tiles
were.

The optical density (OD) of tissue pixels spans a plane whose extreme angles are the hematoxylin
and eosin stain vectors; each tile's pixels are unmixed into stain concentrations, rescaled to the
reference's 99th percentiles and remixed with the reference stains. A tile with too little tissue
(background, pure white) has no stain plane to find and is passed through unchanged; a tile whose
own plane is degenerate is unmixed with the reference stains. Never NaN: every division has a floor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.core import cli

OD_THRESHOLD = 0.15       # a pixel whose strongest channel OD is below this is background
                          # (Macenko's beta). Strongest channel, not every channel: eosin barely
                          # absorbs red, so an all-channel test drops pure stroma and biases the
                          # eosin vector towards hematoxylin; near-white grey stays background.
ANGLE_PERCENTILE = 1.0    # robust extremes of the stain plane (Macenko's alpha)
MIN_TISSUE_FRACTION = 0.05
MIN_TISSUE_PIXELS = 64


@dataclass(frozen=True)
class StainReference:
    stains: np.ndarray        # 2x3, rows H and E, unit OD vectors
    max_concentrations: np.ndarray  # 2, 99th percentile of each stain's concentration

    def to_json(self) -> dict:
        return {"stains_he_od": self.stains.round(6).tolist(),
                "max_concentrations": self.max_concentrations.round(6).tolist()}


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def tissue_od(rgb: np.ndarray) -> np.ndarray:
    """OD vectors (N x 3) of the pixels that carry stain."""
    od = optical_density(rgb).reshape(-1, 3)
    return od[od.max(axis=1) > OD_THRESHOLD]


def stain_vectors(od: np.ndarray) -> np.ndarray | None:
    """Macenko's H and E unit vectors (2x3) from tissue OD pixels, or None if degenerate."""
    if len(od) < MIN_TISSUE_PIXELS:
        return None
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vecs[:, 1:3]                                    # two largest eigenvalues
    plane = plane * np.where(plane.sum(axis=0) < 0, -1, 1)  # point into positive OD
    t = od @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1])  # hematoxylin absorbs more red
    norms = np.linalg.norm(stains, axis=1, keepdims=True)
    if not np.isfinite(stains).all() or (norms < 1e-6).any() or abs(np.dot(*stains) / norms.prod()) > 0.999:
        return None
    return (stains / norms).astype(np.float32)


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations (N x 2) of OD pixels (N x 3)."""
    return np.clip(od @ np.linalg.pinv(stains), 0, None)


def fit_reference(tiles: list[np.ndarray]) -> StainReference:
    od = np.concatenate([tissue_od(t) for t in tiles]) if tiles else np.zeros((0, 3), np.float32)
    stains = stain_vectors(od)
    if stains is None:
        raise cli.UserError(f"the train tiles hold too little tissue ({len(od)} stained pixels) to fit a "
                            "stain reference; is this histopathology data?")
    max_c = np.percentile(concentrations(od, stains), 99, axis=0)
    return StainReference(stains, np.maximum(max_c, 1e-6))


def normalize(rgb: np.ndarray, ref: StainReference) -> tuple[np.ndarray, str]:
    """The tile in the reference's stains, and how: 'normalized', 'reference-stains' or 'background'."""
    rgb = rgb[..., :3] if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)
    od_tissue = tissue_od(rgb)
    if len(od_tissue) < max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * rgb.shape[0] * rgb.shape[1]):
        return rgb, "background"
    stains = stain_vectors(od_tissue)
    how = "normalized" if stains is not None else "reference-stains"
    stains = ref.stains if stains is None else stains
    max_c = np.maximum(np.percentile(concentrations(od_tissue, stains), 99, axis=0), 1e-6)
    c = concentrations(optical_density(rgb).reshape(-1, 3), stains) * (ref.max_concentrations / max_c)
    out = 256.0 * np.exp(-(c @ ref.stains)) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape), how


# the same method in the graph
def _percentile_tf(values, q: float):
    """numpy's default (linear) percentile along axis 0, in TensorFlow."""
    import tensorflow as tf

    sorted_values = tf.sort(values, axis=0)
    n = tf.cast(tf.shape(values)[0], tf.float32)
    position = q / 100.0 * (n - 1.0)
    lo = tf.cast(tf.floor(position), tf.int32)
    hi = tf.minimum(lo + 1, tf.shape(values)[0] - 1)
    frac = position - tf.floor(position)
    return tf.gather(sorted_values, lo) * (1.0 - frac) + tf.gather(sorted_values, hi) * frac


def normalize_tf(rgb, reference: StainReference):
    """:func:`normalize` as TensorFlow ops on one uint8 HxWx3 image, so an exported
    histopathology model normalizes a raw upload exactly as the stain step normalized its
    training tiles (same thresholds, same fallbacks; float32 instead of float64)."""
    import tensorflow as tf

    ref_stains = tf.constant(reference.stains, tf.float32)
    ref_max = tf.constant(reference.max_concentrations, tf.float32)
    od = -tf.math.log((tf.cast(tf.reshape(rgb, [-1, 3]), tf.float32) + 1.0) / 256.0)
    tissue = tf.boolean_mask(od, tf.reduce_max(od, axis=1) > OD_THRESHOLD)
    n = tf.shape(tissue)[0]
    enough = tf.cast(n, tf.float32) >= tf.maximum(
        float(MIN_TISSUE_PIXELS), MIN_TISSUE_FRACTION * tf.cast(tf.shape(od)[0], tf.float32))

    def tile_stains():
        centred = tissue - tf.reduce_mean(tissue, axis=0, keepdims=True)
        cov = tf.matmul(centred, centred, transpose_a=True) / tf.cast(n - 1, tf.float32)
        _, vecs = tf.linalg.eigh(cov)
        plane = vecs[:, 1:3]
        plane = plane * tf.where(tf.reduce_sum(plane, axis=0) < 0, -1.0, 1.0)
        t = tf.matmul(tissue, plane)
        phi = tf.atan2(t[:, 1], t[:, 0])
        lo, hi = _percentile_tf(phi, ANGLE_PERCENTILE), _percentile_tf(phi, 100 - ANGLE_PERCENTILE)
        v1 = tf.linalg.matvec(plane, tf.stack([tf.cos(lo), tf.sin(lo)]))
        v2 = tf.linalg.matvec(plane, tf.stack([tf.cos(hi), tf.sin(hi)]))
        stains = tf.where(v1[0] > v2[0], tf.stack([v1, v2]), tf.stack([v2, v1]))
        norms = tf.norm(stains, axis=1, keepdims=True)
        cosine = tf.abs(tf.reduce_sum(stains[0] * stains[1])) / tf.reduce_prod(norms)
        ok = tf.reduce_all(tf.math.is_finite(stains)) & tf.reduce_all(norms >= 1e-6) & (cosine <= 0.999)
        return tf.where(ok, stains / tf.maximum(norms, 1e-6), ref_stains)

    def normalized():
        stains = tile_stains()
        unmix = tf.linalg.pinv(stains)
        max_c = tf.maximum(_percentile_tf(tf.nn.relu(tf.matmul(tissue, unmix)), 99.0), 1e-6)
        c = tf.nn.relu(tf.matmul(od, unmix)) * (ref_max / max_c)
        out = 256.0 * tf.exp(-tf.matmul(c, ref_stains)) - 1.0
        return tf.reshape(tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), tf.shape(rgb))

    return tf.cond(enough, normalized, lambda: tf.identity(rgb))


def reference_from_json(stain: dict) -> StainReference:
    return StainReference(np.asarray(stain["stains_he_od"], np.float32),
                          np.asarray(stain["max_concentrations"], np.float32))
