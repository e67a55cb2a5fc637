"""Macenko stain normalization and the preprocessing shared by training and serving."""
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.model import preprocess
from components.core import digests
from components.data import macenko, records, schema
from components import sample_data, stain


def _tissue(seed, h_vec, e_vec):
    return sample_data.he_patch(np.random.default_rng(seed), 1, h_vec, e_vec, (64, 64))


@pytest.fixture(scope="module")
def reference():
    tiles = [_tissue(i, sample_data.H_STAIN, sample_data.E_STAIN) for i in range(20)]
    tiles += [sample_data.he_patch(np.random.default_rng(100 + i), 0, sample_data.H_STAIN, sample_data.E_STAIN, (64, 64))
              for i in range(20)]
    return macenko.fit_reference(tiles)


def test_reference_recovers_the_hematoxylin_and_eosin_vectors(reference):
    h, e = reference.stains
    unit = lambda v: v / np.linalg.norm(v)
    # within ~18 degrees: Macenko's percentile extremes are biased by pixel noise
    assert np.dot(h, unit(sample_data.H_STAIN)) > 0.95
    assert np.dot(e, unit(sample_data.E_STAIN)) > 0.95


def test_normalization_brings_a_differently_stained_slide_to_the_reference(reference):
    pale_h = np.array([0.45, 0.80, 0.40], np.float32) * 0.7   # another lab's weaker, bluer hematoxylin
    odd = _tissue(7, pale_h, sample_data.E_STAIN * 1.3)
    target = _tissue(7, sample_data.H_STAIN, sample_data.E_STAIN)  # same tissue, reference stains
    normalized, how = macenko.normalize(odd, reference)
    assert how == "normalized" and normalized.dtype == np.uint8 and normalized.shape == odd.shape
    before = np.abs(odd.astype(float) - target).mean()
    after = np.abs(normalized.astype(float) - target).mean()
    assert after < 0.6 * before


@pytest.mark.parametrize("tile", [np.full((50, 50, 3), 255, np.uint8), np.full((50, 42, 3), 240, np.uint8),
                                  np.zeros((50, 50, 3), np.uint8) + np.array([250, 248, 252], np.uint8)])
def test_background_and_white_tiles_pass_through_without_nan(reference, tile):
    out, how = macenko.normalize(tile, reference)
    assert how == "background" and np.array_equal(out, tile)


def test_flat_single_colour_tissue_falls_back_to_reference_stains(reference):
    flat = np.zeros((50, 50, 3), np.uint8) + np.array([120, 60, 140], np.uint8)   # no stain plane
    out, how = macenko.normalize(flat, reference)
    assert how == "reference-stains" and np.isfinite(out).all() and out.dtype == np.uint8


def test_stain_step_normalizes_every_split(sample_splits, tmp_path):
    result = stain.run(sample_splits["histopathology"], tmp_path / "n")
    assert sum(result["tiles"].values()) == 60
    manifest = json.loads((tmp_path / "n" / "manifest.json").read_text())
    assert manifest["stain"]["method"] == "macenko"
    for name in ("train", "validation", "test"):
        recs = [schema.deserialize(r) for r in records.read_records(tmp_path / "n" / name)]
        assert len(recs) == manifest["splits"][name]["records"]
        assert manifest["splits"][name]["content_sha256"] == digests.content_digest(
            digests.sha256_bytes(schema.serialize(r)) for r in recs)
    assert (tmp_path / "n" / "before_after.png").exists()


def test_median_removes_salt_and_pepper_and_equalize_spans_the_range():
    img = np.full((20, 20, 3), 100, np.uint8)
    img[5, 5] = 255
    img[10, 12] = 0
    assert np.all(preprocess.median3x3(tf.constant(img)).numpy() == 100)
    low_contrast = (np.random.default_rng(0).random((40, 60, 3)) * 60 + 50).astype(np.uint8)
    eq = preprocess.equalize(tf.constant(low_contrast)).numpy()
    assert eq.min() == 0 and eq.max() == 255
    hist = np.bincount(eq[..., 0].ravel(), minlength=256)
    assert np.abs(np.cumsum(hist) / hist.sum() - np.linspace(0, 1, 256)).max() < 0.05   # ~flat CDF


def test_mono_becomes_rgb_and_model_input_is_identical_in_eager_and_tf_data():
    gray = (np.random.default_rng(1).random((45, 70)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    decoded = preprocess.decode_rgb(tf.constant(buf.getvalue()))
    assert decoded.shape == (45, 70, 3) and np.array_equal(decoded.numpy()[..., 0], decoded.numpy()[..., 2])
    native = preprocess.decode(tf.constant(buf.getvalue()))
    assert native.shape == (45, 70, 1)
    for modality in ("mammography", "ultrasound", "histopathology"):
        eager = preprocess.model_input(decoded, modality, 32).numpy()
        # one channel processed then expanded == three identical channels processed
        assert np.array_equal(preprocess.model_input(native, modality, 32).numpy(), eager)
        graph = next(iter(tf.data.Dataset.from_tensors(decoded).map(
            lambda x: preprocess.model_input(x, modality, 32)))).numpy()
        assert eager.shape == (32, 32, 3) and eager.dtype == np.float32
        assert np.array_equal(eager, graph)


def test_graph_normalization_matches_the_stain_step_within_one_grey_level(reference):
    """The exported model normalizes raw uploads in TensorFlow; it must treat them as the
    numpy stain step treated the training tiles."""
    rng = np.random.default_rng(5)
    for i in range(12):
        h_vec, e_vec = sample_data._stain(rng, sample_data.H_STAIN), sample_data._stain(rng, sample_data.E_STAIN)
        tile = sample_data.he_patch(rng, i % 2, h_vec, e_vec, (50, 50))
        expected, _ = macenko.normalize(tile, reference)
        got = macenko.normalize_tf(tf.constant(tile), reference).numpy()
        assert got.dtype == np.uint8 and np.abs(got.astype(int) - expected).max() <= 1
    white = np.full((50, 50, 3), 255, np.uint8)
    assert np.array_equal(macenko.normalize_tf(tf.constant(white), reference).numpy(), white)
