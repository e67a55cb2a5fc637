"""The evaluation's pictures: ROC (pooled and per source), the confusion matrix at the threshold
from validation, the reliability diagram and the learning curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.evaluation.predictions import Scored


def draw(out: Path, scored: Scored, threshold, label_names, history: dict | None, title: str,
         threshold_from: str = "validation") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    y, p = scored.y, scored.p
    names = sorted(set(scored.sources))
    per_source = [(n, scored.subset(np.array(scored.sources) == n)) for n in names] if len(names) > 1 else []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name=f"{title} (pooled)" if per_source else title)
    for name, part in per_source:
        if len(np.unique(part.y)) == 2:
            RocCurveDisplay.from_predictions(part.y, part.p, ax=ax, name=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.legend(loc="lower right", fontsize=7)
    save(fig, "roc.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y, (p >= threshold).astype(int), labels=[0, 1],
                                            display_labels=list(label_names), ax=ax, colorbar=False)
    ax.set_title(f"threshold from {threshold_from}" + ("" if np.ndim(threshold) else f": {float(threshold):.3f}"), fontsize=9)
    save(fig, "confusion_matrix.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, ax=ax, name="pooled" if per_source else title)
    for name, part in per_source:
        CalibrationDisplay.from_predictions(part.y, part.p, n_bins=10, ax=ax, name=name)
    ax.legend(fontsize=7)
    save(fig, "calibration.png")
    if history:
        keys = [k for k in ("loss", "auc") if k in history]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            epochs = range(1, len(history[key]) + 1)
            ax.plot(epochs, history[key], "o-", label=f"train {key}")
            if f"val_{key}" in history:
                ax.plot(epochs, history[f"val_{key}"], "o-", label=f"validation {key}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "learning_curves.png")
