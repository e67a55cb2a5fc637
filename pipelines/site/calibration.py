"""The site's operating point, chosen on the calibration part alone: a temperature that
re-scales the served probability to the site's scanners, and a threshold on the re-scaled
probability for the target the site declares. ``choose`` is given the calibration part's
arrays and nothing else, so it cannot read the verification part."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from components.evaluation import stats

DECIMALS = 4
SCALE = 10 ** DECIMALS


@dataclass(frozen=True)
class Target:
    measure: str        # "sensitivity" or "specificity"
    value: float

    def __post_init__(self):
        if self.measure not in ("sensitivity", "specificity"):
            raise ValueError(f"a target is a sensitivity or a specificity, not {self.measure!r}")
        if not 0 < self.value < 1:
            raise ValueError(f"the target {self.measure} must lie between 0 and 1, not {self.value}")

    def as_dict(self) -> dict:
        return {self.measure: self.value}


@dataclass(frozen=True)
class Choice:
    temperature: float      # sigmoid(logit(p) / T): the site's probability from the served one
    threshold: float        # on the site's probability


def choose(y_calibration: np.ndarray, p_calibration: np.ndarray, target: Target) -> Choice:
    """T minimising the log loss on the calibration part, then the threshold meeting the target
    there: for sensitivity, the highest threshold that reaches it (the most specific such
    operating point); for specificity, the lowest (the most sensitive)."""
    y, p = np.asarray(y_calibration).astype(int), np.asarray(p_calibration, float)
    if len(np.unique(y)) < 2:
        raise ValueError("the calibration part needs patients of both classes")
    # four decimals, as the profile carries them, so the verification part judges the very
    # operating point a server will apply; the threshold rounded the way that keeps the target
    temperature = round(stats.fit_temperature(y, p), DECIMALS)
    q = stats.apply_temperature(p, temperature)
    if target.measure == "sensitivity":
        threshold = math.floor(stats.choose_threshold(y, q, target_sensitivity=target.value) * SCALE) / SCALE
    else:
        threshold = math.ceil(threshold_for_specificity(y, q, target.value) * SCALE) / SCALE
    return Choice(temperature, threshold)


def threshold_for_specificity(y: np.ndarray, q: np.ndarray, specificity: float) -> float:
    """The lowest threshold t with specificity (share of negatives scored below t) at least
    ``specificity``: just above the negative score that must still fall below it."""
    negatives = np.sort(q[y == 0])
    allowed_above = int(np.floor((1 - specificity) * len(negatives) + 1e-9))   # negatives that may reach t
    if allowed_above >= len(negatives):
        return float(negatives[0])
    cut = negatives[len(negatives) - 1 - allowed_above]            # the highest negative that must stay below
    above = q[q > cut]
    return float(above.min()) if len(above) else float(np.nextafter(cut, np.inf))
