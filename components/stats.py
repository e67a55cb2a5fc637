"""Binary-classifier statistics: metrics at a threshold, cluster (patient-level) bootstrap
confidence intervals, paired cluster-bootstrap AUC comparisons with Holm's correction, threshold
choice and temperature scaling on validation, calibration, and DeLong's paired test of two AUCs
(for records that are independent).
Metrics themselves come from scikit-learn; this module adds the resampling around them."""
from __future__ import annotations

import numpy as np
from scipy import stats as sps
from sklearn import metrics as skm

METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
           "brier")
BOOTSTRAP_RESAMPLES = 2000


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Every metric of METRICS. The counting ones follow from the confusion matrix; the ranking
    and probability ones are scikit-learn's (nan when a class is missing)."""
    y = np.asarray(y).astype(int)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = np.bincount(2 * y + pred, minlength=4).astype(float)

    def ratio(a, b):
        return a / b if b else float("nan")

    recall, specificity, precision = ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp) if tp + fp else 0.0
    both = tp + fn > 0 and tn + fp > 0
    return {
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": 0.0 if np.isnan(recall) else recall,
        "specificity": specificity,
        "f1": ratio(2 * tp, 2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": skm.roc_auc_score(y, p) if both else float("nan"),
        "pr_auc": skm.average_precision_score(y, p) if both else float("nan"),
        "brier": skm.brier_score_loss(y, p),
    }


def cluster_resamples(clusters, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
    """``n`` bootstrap index arrays that draw whole clusters (patients) with replacement, so
    records of one patient, which are not independent, enter or leave a resample together.
    With every record its own cluster this is the ordinary bootstrap."""
    clusters = np.asarray(clusters)
    _, which = np.unique(clusters, return_inverse=True)
    members = [np.nonzero(which == c)[0] for c in range(which.max() + 1)]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])


def _interval(values: list[float], level: float) -> tuple[float, float]:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return (float(np.percentile(values, 100 * (1 - level) / 2)), float(np.percentile(values, 100 * (1 + level) / 2)))


def bootstrap(y: np.ndarray, p: np.ndarray, threshold: float, clusters=None, n: int = BOOTSTRAP_RESAMPLES,
              seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Each metric with a percentile interval from a cluster bootstrap over ``clusters``
    (patients; default: every record its own). Resamples missing a class give no AUC."""
    y, p = np.asarray(y), np.asarray(p)
    clusters = np.arange(len(y)) if clusters is None else clusters
    point = at_threshold(y, p, threshold)
    draws = {m: [] for m in METRICS}
    for idx in cluster_resamples(clusters, n, seed):
        for m, v in at_threshold(y[idx], p[idx], threshold).items():
            draws[m].append(v)
    return {m: dict(zip(("value", "ci_low", "ci_high"), (float(point[m]), *_interval(draws[m], level))))
            for m in METRICS}


def paired_auc_bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], clusters, n: int = BOOTSTRAP_RESAMPLES,
                         seed: int = 0, level: float = 0.95) -> list[dict]:
    """Every pair of models scored on the same records: the AUC difference with a paired
    cluster-bootstrap interval (the same resampled patients for both models) and a two-sided
    bootstrap p-value (twice the smaller tail share of differences at or beyond zero)."""
    y = np.asarray(y)
    names = list(scores)
    aucs = {name: skm.roc_auc_score(y, scores[name]) for name in names}
    draws = {name: [] for name in names}
    for idx in cluster_resamples(clusters, n, seed):
        if len(np.unique(y[idx])) < 2:
            continue
        for name in names:
            draws[name].append(skm.roc_auc_score(y[idx], scores[name][idx]))
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = np.array(draws[a]) - np.array(draws[b])
            p_value = min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean())) if len(diff) else float("nan")
            low, high = _interval(list(diff), level)
            out.append({"model_1": a, "model_2": b, "auc_1": float(aucs[a]), "auc_2": float(aucs[b]),
                        "difference": float(aucs[a] - aucs[b]), "ci_low": low, "ci_high": high,
                        "p_value": float(p_value), "resamples": int(len(diff))})
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for multiple comparisons (family-wise error)."""
    order = np.argsort(p_values)
    m, adjusted, running = len(p_values), [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """Temperature T minimising the log loss of sigmoid(logit(p) / T) on (y, p): fit it on the
    validation split only, then apply it unchanged elsewhere (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    logits, y = _logit(p), np.asarray(y, float)

    def nll(log_t):
        q = np.clip(1 / (1 + np.exp(-logits / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))

    return float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded").x))


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    return 1 / (1 + np.exp(-_logit(p) / temperature))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


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


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """The highest sensitivity reached at a specificity of at least ``specificity`` (ROC curve)."""
    fpr, tpr, _ = skm.roc_curve(y, p)
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Reliability curve and expected calibration error over ``bins`` equal-width probability
    bins (ECE = sum over bins of the bin's share of records x |mean probability - positive rate|)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            conf, acc = float(p[mask].mean()), float(y[mask].mean())
            ece += mask.mean() * abs(conf - acc)
            rows.append({"bin": b, "count": int(mask.sum()), "mean_probability": conf, "positive_rate": acc})
    return {"ece": float(ece), "binning": f"{bins} equal-width bins", "bins": rows}


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
