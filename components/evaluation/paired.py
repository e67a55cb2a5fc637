"""Is one model's ROC AUC different from another's on the same records? One choice of test for
every paired comparison (the compare step, champion and challenger): DeLong's when every record is
its own patient, else a paired cluster bootstrap that resamples whole patients for both models."""
from __future__ import annotations

import numpy as np

from components.evaluation import stats

Z_95 = 1.959964


def auc_difference(y: np.ndarray, first: np.ndarray, second: np.ndarray, groups: list[str],
                   bootstrap: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """AUC of ``first`` minus that of ``second``, its 95 % interval and two-sided p-value, and
    which test gave them."""
    if len(set(groups)) == len(groups):
        d = stats.delong(y, first, second)
        half = Z_95 * d["se"]
        return {"test": "DeLong (paired ROC AUC; records independent)", **d,
                "ci_low": d["difference"] - half, "ci_high": d["difference"] + half, "p_value_is_bound": False}
    (r,) = stats.paired_auc_bootstrap(y, {"first": first, "second": second}, groups, n=bootstrap, seed=seed)
    del r["model_1"], r["model_2"]
    return {"test": f"paired cluster bootstrap of the AUC difference ({len(set(groups))} patients/groups, "
                    f"{r['resamples']} resamples)", **r}
