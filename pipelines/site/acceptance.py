"""The measurements: the operating point chosen on the calibration part (``calibration.choose``,
given that part's arrays only), then everything judged on the verification part: AUC with its
patient-bootstrap interval, calibration before and after the site's temperature, sensitivity
and specificity with intervals at the model's own threshold and at the site's."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.evaluation import stats

from pipelines.site import calibration, sizing
from pipelines.site.split import Split, patient_labels

FALLBACK_AUC = 0.75     # where the verification AUC cannot be measured, the detectable difference is stated here


@dataclass(frozen=True)
class Scores:
    y: np.ndarray               # labels 0/1, one per image
    p: np.ndarray               # the served probability
    patients: list[str]         # pseudonyms
    model_threshold: float


def part_counts(patients: list[str], y: np.ndarray) -> dict[str, int]:
    labels = patient_labels(patients, y)
    positive = sum(labels.values())
    return {"patients": len(labels), "images": len(patients), "positive": positive, "negative": len(labels) - positive}


def measure(scores: Scores, split: Split, target: calibration.Target, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
            seed: int = 0) -> dict:
    cal, ver = split.masks(scores.patients)
    cal_patients = [p for p, keep in zip(scores.patients, cal) if keep]
    ver_patients = [p for p, keep in zip(scores.patients, ver) if keep]
    counts = {"calibration": part_counts(cal_patients, scores.y[cal]),
              "verification": part_counts(ver_patients, scores.y[ver])}
    out: dict = {"counts": counts}
    if min(counts["calibration"]["positive"], counts["calibration"]["negative"]) < 1:
        out["choice"] = None
    else:
        choice = calibration.choose(scores.y[cal], scores.p[cal], target)
        out["choice"] = {"temperature": choice.temperature, "threshold": choice.threshold,
                         "target": target.as_dict(), "chosen_on": "calibration part only"}
    y, p = scores.y[ver], scores.p[ver]
    n_pos, n_neg = counts["verification"]["positive"], counts["verification"]["negative"]
    if min(n_pos, n_neg) < 1:
        out["verification"] = None
        out["detectable_auc_difference"] = sizing.detectable_auc_difference(FALLBACK_AUC, n_pos, n_neg)
        return out
    own = stats.bootstrap(y, p, scores.model_threshold, ver_patients, n=bootstrap, seed=seed)
    verification = {
        "roc_auc": own["roc_auc"],
        "calibration_before": stats.calibration(y, p),
        "model_threshold": _operating_point(scores.model_threshold, own),
    }
    if out["choice"]:
        q = stats.apply_temperature(p, out["choice"]["temperature"])
        site = stats.bootstrap(y, q, out["choice"]["threshold"], ver_patients, n=bootstrap, seed=seed)
        verification["calibration_after"] = stats.calibration(y, q)
        verification["site_threshold"] = _operating_point(out["choice"]["threshold"], site)
    out["verification"] = verification
    out["detectable_auc_difference"] = sizing.detectable_auc_difference(own["roc_auc"]["value"], n_pos, n_neg)
    return out


def _operating_point(threshold: float, boot: dict) -> dict:
    return {"threshold": threshold, "sensitivity": boot["recall"], "specificity": boot["specificity"]}


def site_probabilities(p: np.ndarray, choice: dict | None) -> np.ndarray | None:
    return None if not choice else stats.apply_temperature(p, choice["temperature"])
