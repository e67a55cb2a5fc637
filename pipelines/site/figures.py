"""The pictures of the verification part, drawn by the evaluation's own plotting
(``components.evaluation.plots``): once with the served probabilities at the model's threshold,
once with the site's probabilities at the site's threshold. The ROC is the same curve both
times (a temperature keeps the order), so it is kept once."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from components.evaluation import plots
from components.evaluation.predictions import Scored


def draw(y: np.ndarray, p: np.ndarray, patients: list[str], model_threshold: float, label_names,
         title: str, q: np.ndarray | None = None, site_threshold: float | None = None) -> dict[str, bytes]:
    """name -> PNG bytes: roc, reliability_before, confusion_model_threshold, and, with the
    site's probabilities ``q``, reliability_after and confusion_site_threshold."""
    scored = Scored(np.asarray(y).astype(int), np.asarray(p, float), [str(i) for i in range(len(y))], list(patients),
                    ["site"] * len(y))
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as folder:
        before = Path(folder) / "before"
        before.mkdir()
        plots.draw(before, scored, model_threshold, label_names, None, f"{title}, served",
                   threshold_from="the model")
        out["roc"] = (before / "roc.png").read_bytes()
        out["reliability_before"] = (before / "calibration.png").read_bytes()
        out["confusion_model_threshold"] = (before / "confusion_matrix.png").read_bytes()
        if q is not None:
            after = Path(folder) / "after"
            after.mkdir()
            site = Scored(scored.y, np.asarray(q, float), scored.ids, scored.patients, scored.sources)
            plots.draw(after, site, site_threshold, label_names, None, f"{title}, site temperature",
                       threshold_from="the calibration part")
            out["reliability_after"] = (after / "calibration.png").read_bytes()
            out["confusion_site_threshold"] = (after / "confusion_matrix.png").read_bytes()
    return out
