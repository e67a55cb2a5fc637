"""Binary-classifier statistics: metrics at a threshold, cluster (patient-level) bootstrap
confidence intervals, paired cluster-bootstrap AUC comparisons with Holm's correction, threshold
choice and temperature scaling on validation, calibration, and DeLong's paired test of two AUCs
(for records that are independent).
Metrics themselves come from scikit-learn; this module adds the resampling around them."""
from __future__ import annotations

import numpy as np

# scipy and scikit-learn are imported by the functions that use them: importing them costs about
# 1.5 s of CPU, which every ``python -m pipelines`` command paid for the constants it reads here

METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc",
           "brier")
BOOTSTRAP_RESAMPLES = 2000


def at_threshold(y: np.ndarray, p: np.ndarray, threshold) -> dict[str, float]:
    """Every metric of METRICS (``threshold``: one, or one per record). The counting ones follow
    from the confusion matrix; the ranking and probability ones are scikit-learn's (nan when a
    class is missing)."""
    from sklearn import metrics as skm

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


def cluster_weights(clusters, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cluster bootstrap as weights: (an ``n`` x clusters matrix of how often each resample
    draws each cluster (patient), each record's cluster index). Whole clusters enter or leave a
    resample together, because records of one patient are not independent; with every record
    its own cluster this is the ordinary bootstrap. The draws are those of ``cluster_resamples``."""
    _, which = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(which.max()) + 1 if len(which) else 0
    draws = np.random.default_rng(seed).integers(0, k, size=(n, k))
    counts = np.zeros((n, k), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n), k), draws.ravel()), 1.0)
    return counts, which.reshape(-1)


def cluster_resamples(clusters, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
    """``n`` bootstrap index arrays that draw whole clusters (patients) with replacement (the
    same draws as ``cluster_weights``, as record indices)."""
    clusters = np.asarray(clusters)
    _, which = np.unique(clusters, return_inverse=True)
    members = [np.nonzero(which == c)[0] for c in range(which.max() + 1)]
    for row in np.random.default_rng(seed).integers(0, len(members), size=(n, len(members))):
        yield np.concatenate([members[c] for c in row])


def _interval(values, level: float) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    return (float(np.percentile(values, 100 * (1 - level) / 2)), float(np.percentile(values, 100 * (1 + level) / 2)))


def _levels(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records in ascending score order and the start of each run of tied scores."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(s))[0] + 1]) if len(s) else np.zeros(0, int)
    return order, starts


def weighted_ranking(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision (scikit-learn's definitions: ties count one half; AP is
    the step sum over descending thresholds) of every row of record ``weights`` (resamples x
    records) at once; nan where a row lacks a class."""
    y = np.asarray(y).astype(bool)
    order, starts = _levels(np.asarray(p, float))
    w = weights[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1) if len(starts) else np.zeros((len(w), 0))
    neg = np.add.reduceat(w * ~y[order], starts, axis=1) if len(starts) else np.zeros((len(w), 0))
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg                           # negatives scored lower
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        tp, fp = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)   # thresholds descending
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        ap = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
    both = (n_pos > 0) & (n_neg > 0)
    return np.where(both, auc, np.nan), np.where(both, ap, np.nan)


def weighted_metrics(y: np.ndarray, p: np.ndarray, threshold, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of METRICS for every row of ``weights`` (resamples x records), as
    ``at_threshold`` computes it for one resample. ``threshold`` may be one number or one per
    record (pooled out-of-fold predictions keep each fold's threshold)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, float)
    pred = (p >= np.asarray(threshold)).astype(int)
    cells = np.stack([(y == a) & (pred == b) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))], axis=1).astype(float)
    tn, fp, fn, tp = (weights @ cells).T
    total = tn + fp + fn + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / (tp + fn)
        specificity = tn / (tn + fp)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        f1 = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        brier = weights @ ((p - y) ** 2) / total
    auc, ap = weighted_ranking(y, p, weights)
    return {"accuracy": (tp + tn) / total, "balanced_accuracy": (recall + specificity) / 2, "precision": precision,
            "recall": np.nan_to_num(recall, nan=0.0), "specificity": specificity, "f1": f1, "roc_auc": auc,
            "pr_auc": ap, "brier": brier}


def bootstrap(y: np.ndarray, p: np.ndarray, threshold, clusters=None, n: int = BOOTSTRAP_RESAMPLES,
              seed: int = 0, level: float = 0.95, chunk: int = 250) -> dict[str, dict[str, float]]:
    """Each metric with a percentile interval from a cluster bootstrap over ``clusters``
    (patients; default: every record its own). Resamples missing a class give no AUC. The
    resamples are record weights, computed ``chunk`` at a time in numpy (no per-resample call
    through scikit-learn's input checks: 2,000 resamples of a few thousand records in well
    under a second); the values equal the loop over ``cluster_resamples`` with ``at_threshold``."""
    y, p = np.asarray(y), np.asarray(p, float)
    clusters = np.arange(len(y)) if clusters is None else clusters
    # the point estimate by the same arithmetic as the resamples, and both rounded to 12 places:
    # a resample that repeats the data with other weights then gives the point exactly, not
    # a value one rounding step away (a degenerate interval must not exclude its estimate)
    point = {m: np.round(v[0], 12) for m, v in weighted_metrics(y, p, threshold, np.ones((1, len(y)))).items()}
    counts, which = cluster_weights(clusters, n, seed)
    draws = {m: [] for m in METRICS}
    for start in range(0, n, chunk):
        for m, v in weighted_metrics(y, p, threshold, counts[start:start + chunk][:, which]).items():
            draws[m].append(np.round(v, 12))
    return {m: dict(zip(("value", "ci_low", "ci_high"), (float(point[m]), *_interval(np.concatenate(draws[m]), level))))
            for m in METRICS}


def bootstrap_reference(y: np.ndarray, p: np.ndarray, threshold, clusters, n: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """The intervals as they were computed before ``bootstrap`` was vectorised: one scikit-learn
    call per metric and resample, over the record indices of ``cluster_resamples``. Kept as the
    reference the vectorised one is tested and benchmarked against (bench.evaluation)."""
    y, p = np.asarray(y), np.asarray(p, float)
    draws = {m: [] for m in METRICS}
    for idx in cluster_resamples(clusters, n, seed):
        for m, v in at_threshold(y[idx], p[idx], threshold[idx] if np.ndim(threshold) else threshold).items():
            draws[m].append(v)
    return {m: _interval(draws[m], level) for m in METRICS}


def bootstrap_p(diff: np.ndarray) -> tuple[float, bool]:
    """Two-sided bootstrap p-value of a difference (twice the smaller tail share at or beyond
    zero) and whether it is only a bound: with no resample at or across zero it is ``< 1/B``,
    reported as 1/B and flagged, never as 0."""
    if not len(diff):
        return float("nan"), False
    p = min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean()))
    return (1.0 / len(diff), True) if p == 0 else (float(p), False)


def format_p(p: float, bound: bool = False) -> str:
    return f"< {p:.2g}" if bound else f"{p:.3g}"


def paired_auc_bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], clusters, n: int = BOOTSTRAP_RESAMPLES,
                         seed: int = 0, level: float = 0.95) -> list[dict]:
    """Every pair of models scored on the same records: the AUC difference with a paired
    cluster-bootstrap interval (the same resampled patients for both models) and a two-sided
    bootstrap p-value (``bootstrap_p``)."""
    from sklearn import metrics as skm

    y = np.asarray(y)
    names = list(scores)
    aucs = {name: skm.roc_auc_score(y, scores[name]) for name in names}
    counts, which = cluster_weights(clusters, n, seed)
    draws = {name: np.concatenate([weighted_ranking(y, scores[name], counts[start:start + 250][:, which])[0]
                                   for start in range(0, n, 250)]) for name in names}
    valid = np.isfinite(draws[names[0]]) if names else np.zeros(0, bool)   # resamples holding both classes
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = (draws[a] - draws[b])[valid]
            p_value, bound = bootstrap_p(diff)
            low, high = _interval(diff, level)
            out.append({"model_1": a, "model_2": b, "auc_1": float(aucs[a]), "auc_2": float(aucs[b]),
                        "difference": float(aucs[a] - aucs[b]), "ci_low": low, "ci_high": high,
                        "p_value": p_value, "p_value_is_bound": bound, "resamples": int(len(diff))})
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for multiple comparisons (family-wise error)."""
    order = np.argsort(p_values)
    m, adjusted, running = len(p_values), [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


# the temperature is searched in [e^-4, e^4]
TEMPERATURE_BOUNDS = (float(np.exp(-4)), float(np.exp(4)))


def temperature_at_upper_bound(temperature: float, tolerance: float = 0.01) -> bool:
    """A fit at the upper end flattens every score towards 0.5: no scaling explains them. (The
    lower end only sharpens scores that already separate the validation split perfectly.)"""
    return temperature >= TEMPERATURE_BOUNDS[1] * (1 - tolerance)


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """Temperature T minimising the log loss of sigmoid(logit(p) / T) on (y, p): fit it on the
    validation split only, then apply it unchanged elsewhere (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    logits, y = _logit(p), np.asarray(y, float)

    def nll(log_t):
        q = np.clip(1 / (1 + np.exp(-logits / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))

    bounds = tuple(float(np.log(b)) for b in TEMPERATURE_BOUNDS)
    return float(np.exp(minimize_scalar(nll, bounds=bounds, method="bounded").x))


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    return 1 / (1 + np.exp(-_logit(p) / temperature))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float | None = None) -> float:
    """On validation scores: the threshold with the highest F1, or the highest threshold
    whose sensitivity reaches ``target_sensitivity``."""
    from sklearn import metrics as skm

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
    from sklearn import metrics as skm

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
    from scipy import stats as sps

    return sps.rankdata(x, method="average")


def delong(y: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> dict[str, float]:
    """DeLong et al. (1988) test that two correlated ROC AUCs (same examples) are equal, in
    the fast midrank form of Sun & Xu (2014). Returns both AUCs, the difference, its standard
    error, z and the two-sided p-value."""
    from scipy import stats as sps

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
