"""The training input pipeline: shapes, labels, augmentation that moves pixels but keeps range."""
import numpy as np
import tensorflow as tf

from components.model import inputs


def test_evaluation_batches_are_deterministic_and_carry_ids(sample_splits):
    split = sample_splits["mammography"] / "validation"
    a = list(inputs.dataset(split, "mammography", 32, 8, training=False, with_ids=True))
    b = list(inputs.dataset(split, "mammography", 32, 8, training=False, with_ids=True))
    images, labels, source_ids, patients, sources = a[0]
    assert images.shape[1:] == (32, 32, 3) and images.dtype == tf.float32 and labels.dtype == tf.float32
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[2], y[2]) for x, y in zip(a, b))
    negatives, positives = inputs.count_labels(split)
    assert sum(int(x[1].shape[0]) for x in a) == negatives + positives


def _seed(*values):
    return tf.constant(values, tf.int64)


def test_augmentation_warps_each_image_but_keeps_shape_and_range():
    rng = np.random.default_rng(0)
    augment = inputs.augmenter("histology")
    for k in range(4):
        image = rng.integers(0, 256, (40, 40, 3)).astype("uint8")
        out = augment(tf.constant(image), _seed(3, k)).numpy()
        assert out.shape == (40, 40, 3) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
        assert not np.allclose(out, image)
        # stateless: the same image and seed give the same pixels, another seed others
        assert np.array_equal(out, augment(tf.constant(image), _seed(3, k)).numpy())
        assert not np.allclose(out, augment(tf.constant(image), _seed(4, k)).numpy())
    # grayscale is augmented on one channel and comes out as RGB with equal channels
    gray = inputs.augmenter("report")(tf.constant(rng.integers(0, 256, (40, 40, 1)).astype("uint8")), _seed(1, 0)).numpy()
    assert gray.shape == (40, 40, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    # flip/rotation/zoom keep a centred bright disk near the centre
    yy, xx = np.mgrid[0:41, 0:41]
    disk = (((yy - 20) ** 2 + (xx - 20) ** 2 < 36) * 200).astype("uint8")[..., None]
    warped = inputs.augmenter("report")(tf.constant(disk), _seed(1, 0)).numpy()[..., 0]
    assert warped[20, 20] > 150 and warped[0, 0] < 60


def test_training_batches_are_augmented(sample_splits):
    split = sample_splits["ultrasound"] / "train"
    plain = next(iter(inputs.dataset(split, "ultrasound", 32, 64, training=False)))[0].numpy()
    aug = next(iter(inputs.dataset(split, "ultrasound", 32, 64, training=True, seed=0)))[0].numpy()
    assert aug.shape[1:] == plain.shape[1:] and aug.min() >= 0 and aug.max() <= 255
    # the shuffled and augmented batch is not the plain one
    assert not np.allclose(np.sort(aug.ravel()), np.sort(plain[: len(aug)].ravel()))


def test_training_batches_are_the_same_on_every_run_and_new_each_epoch(sample_splits):
    """Seeded shuffle of records in file order, a stateless augmentation seed per element:
    two pipelines built alike give identical epochs, and a second epoch differs from the first."""
    split = sample_splits["histopathology"] / "train"

    def epochs(seed):
        ds = inputs.dataset(split, "histopathology", 32, 16, training=True, seed=seed)
        return [np.concatenate([b[0].numpy() for b in ds]) for _ in range(2)]

    first, again, other = epochs(5), epochs(5), epochs(6)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], other[0])
