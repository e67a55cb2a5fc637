"""Binary-classifier statistics: metrics at a threshold, bootstrap confidence intervals,
threshold choice on validation, calibration, and DeLong's paired test of two AUCs.
Metrics themselves come from scikit-learn; this module adds the resampling around them."""
from __future__ import annotations

import numpy as np
from scipy import stats as sps
from sklearn import metrics as skm

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "roc_auc": skm.roc_auc_score(y, p) if both else float("nan"),
    }


def bootstrap(y: np.ndarray, p: np.ndarray, threshold: float, n: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, dict[str, float]]:
    """Each metric with a percentile bootstrap interval (records resampled with replacement;
    resamples with one class only are skipped for AUC)."""
    rng = np.random.default_rng(seed)
    point = at_threshold(y, p, threshold)
    draws = {m: [] for m in METRICS}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        for m, v in at_threshold(y[idx], p[idx], threshold).items():
            if np.isfinite(v):
                draws[m].append(v)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {m: {"value": float(point[m]),
                "ci_low": float(np.percentile(draws[m], lo_q)) if draws[m] else float("nan"),
                "ci_high": float(np.percentile(draws[m], hi_q)) if draws[m] else float("nan")}
            for m in METRICS}


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float | None = None) -> float:
    """On validation scores: the threshold with the highest F1, or the highest threshold
    whose sensitivity reaches ``target_sensitivity``."""
    if len(np.unique(y)) < 2:
        raise ValueError("the threshold split needs both classes")
    if target_sensitivity is not None:
        fpr, tpr, thresholds = skm.roc_curve(y, p)
        ok = np.nonzero(tpr >= target_sensitivity)[0]
        return float(min(thresholds[ok[0]], 1.0))
    precision, recall, thresholds = skm.precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Reliability curve (equal-width bins) and expected calibration error."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            conf, acc = float(p[mask].mean()), float(y[mask].mean())
            ece += mask.mean() * abs(conf - acc)
            rows.append({"bin": b, "count": int(mask.sum()), "mean_probability": conf, "positive_rate": acc})
    return {"ece": float(ece), "bins": rows}


def _midranks(x: np.ndarray) -> np.ndarray:
    return sps.rankdata(x, method="average")


def delong(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> dict[str, float]:
    """DeLong et al. (1988) test that two correlated ROC AUCs (same examples) are equal, in
    the fast midrank form of Sun & Xu (2014). Returns both AUCs, the difference, its standard
    error, z and the two-sided p-value."""
    y = np.asarray(y).astype(bool)
    pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two examples of each class")
    aucs, v01, v10 = [], [], []
    for p in (np.asarray(p1, float), np.asarray(p2, float)):
        tx, ty, tz = _midranks(p[pos]), _midranks(p[neg]), _midranks(np.concatenate([p[pos], p[neg]]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v01.append((tz[:m] - tx) / n)          # structural components over positives
        v10.append(1.0 - (tz[m:] - ty) / m)    # and over negatives
    s01, s10 = np.cov(np.vstack(v01)), np.cov(np.vstack(v10))
    cov = s01 / m + s10 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 1e-300:
        z, pval = 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / np.sqrt(var)
        pval = float(2 * sps.norm.sf(abs(z)))
    return {"auc_1": float(aucs[0]), "auc_2": float(aucs[1]), "difference": float(diff),
            "se": float(np.sqrt(max(var, 0))), "z": float(z), "p_value": pval}
