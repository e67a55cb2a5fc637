"""Loading a trained Keras model for scoring."""
from __future__ import annotations

from pathlib import Path

from components.core import artifacts


def load_model(model_dir: str | Path):
    """The Keras model a training saved. Loading it is where a scoring process first starts
    TensorFlow, so Eigen's kernels are chosen here (``components.model.repeatable``)."""
    from components.model import repeatable

    repeatable.before_tensorflow()
    import keras

    from components.model import backbones  # noqa: F401  (registers BackbonePreprocess for loading)

    return keras.models.load_model(Path(model_dir) / artifacts.MODEL, compile=False)
