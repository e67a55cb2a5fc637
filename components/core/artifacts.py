"""The names of the files that steps hand to each other, and reading them back: one place, so a
renamed file cannot leave a reader behind.

- a trained-model folder (components.train): ``model.keras``, ``training.json``, ``history.json``;
- an evaluation folder (components.evaluate, components.baseline, components.ensemble,
  components.crossval): ``metrics.json``, ``predictions.csv``, ``validation_predictions.csv``,
  ``blessing.json`` and the ``PICTURES``; the baselines' ``shortcut.json``, the ensemble's
  ``ensemble.json``;
- a folds folder (components.crossval): ``folds.json`` and ``fold-<i>/`` split folders;
- a split folder (components.split, components.stain): ``manifest.json``, ``patients.csv``;
- a run folder (pipelines.local): ``manifest.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL = "model.keras"
TRAINING = "training.json"
HISTORY = "history.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
VALIDATION_PREDICTIONS = "validation_predictions.csv"
SHORTCUT = "shortcut.json"
ENSEMBLE = "ensemble.json"
FOLDS = "folds.json"
BLESSING = "blessing.json"
MANIFEST = "manifest.json"
PATIENTS = "patients.csv"
# in a SavedModel's assets.extra/: TF Serving's warm-up requests, the model card, what the graph
# was built from (the card step checks it) and the content digest a push records
WARMUP_FILE = "tf_serving_warmup_requests"
MODEL_CARD = "model_card.json"
GRAPH = "graph.json"
PICTURES = ("roc.png", "confusion_matrix.png", "calibration.png", "learning_curves.png")


def read_json(folder: str | Path, name: str, default=None) -> dict:
    """``folder/name`` parsed, or ``default`` when given and the file is absent."""
    path = Path(folder) / name
    if default is not None and not path.exists():
        return default
    return json.loads(path.read_text())


def read_blessing(evaluation_dir: str | Path) -> dict:
    """The evaluation's blessing: ``{"blessed": bool, "rule": str, "reason": str, ...}``."""
    return read_json(evaluation_dir, BLESSING)
