"""The histogram baseline's features: the same columns for every split."""
import numpy as np

from components import baseline


def test_every_split_gets_the_train_splits_channels():
    """Found on BUSI: its train split holds colour overlays, its test split none; features
    decided per split gave 102 columns for train and 34 for test, and the study stopped."""
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (4, 16, 16, 1)), 3, axis=-1).astype(np.float32)
    colour = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    train = np.concatenate([grey, colour])
    channels = baseline.channels_of(train)
    assert channels == 3 and baseline.channels_of(grey) == 1
    assert baseline.features_of(train, channels).shape == (8, 3 * (baseline.BINS + 2))
    assert baseline.features_of(grey, channels).shape == (4, 3 * (baseline.BINS + 2))
    hist = baseline.features_of(grey, 1)[:, :baseline.BINS]
    assert np.allclose(hist.sum(axis=1), 1.0)
