"""How many patients a verdict needs, and what the verification part can tell apart.

Enough patients, per class, in the verification part: at least ``min_per_class`` and enough for
the 95% interval of the declared proportion to be at most ``half_width`` either side,
n >= z^2 s (1 - s) / half_width^2 (the normal approximation to a binomial proportion), where s
is the sensitivity the site declares (its target, else its floor) for the positives and the
specificity likewise for the negatives; a class with nothing declared needs ``min_per_class``.
At sensitivity .90 and +/- .10 that is 35 positive patients. Patients, not images, are counted:
one patient's images are not independent, and the intervals resample patients. The calibration
part needs ``min_per_class`` of each class too, or its choice is noise.

The smallest AUC difference the verification part can detect: (z_.975 + z_.80) x SE(AUC), with
SE from Hanley and McNeil (1982) at the measured AUC and the part's patient counts per class,
i.e. the distance from a fixed reference AUC (a floor, the model's reported AUC) that a
two-sided 5% test would find with 80% power.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959964           # two-sided 5%
Z80 = 0.841621           # 80% power
DEFAULT_HALF_WIDTH = 0.10
DEFAULT_MIN_PER_CLASS = 10


@dataclass(frozen=True)
class Rule:
    half_width: float = DEFAULT_HALF_WIDTH
    min_per_class: int = DEFAULT_MIN_PER_CLASS

    def for_proportion(self, declared: float | None) -> int:
        if declared is None:
            return self.min_per_class
        return max(self.min_per_class, math.ceil(Z95 ** 2 * declared * (1 - declared) / self.half_width ** 2))

    def text(self) -> str:
        return (f"per class, in the verification part: at least {self.min_per_class} patients, and enough for the "
                f"95% interval of the declared sensitivity (positives) or specificity (negatives) to be at most "
                f"+/-{self.half_width:g}: n >= 1.96^2 s(1-s) / {self.half_width:g}^2; in the calibration part at least "
                f"{self.min_per_class} patients per class")


def needed(rule: Rule, declared_sensitivity: float | None, declared_specificity: float | None) -> dict[str, int]:
    return {"positive": rule.for_proportion(declared_sensitivity), "negative": rule.for_proportion(declared_specificity)}


def check(rule: Rule, declared_sensitivity: float | None, declared_specificity: float | None,
          verification: dict[str, int], calibration: dict[str, int], fraction: float) -> dict:
    """Whether both parts have enough patients, and, where not, how many the site needs in all
    (the verification part holds about 1 - ``fraction`` of each class)."""
    need = needed(rule, declared_sensitivity, declared_specificity)
    short = []
    for cls in ("positive", "negative"):
        if verification[cls] < need[cls]:
            at_site = math.ceil(need[cls] / (1 - fraction))
            short.append(f"the verification part has {verification[cls]} {cls} patients and needs {need[cls]} "
                         f"(about {at_site} {cls} patients at the site with --calibration-fraction {fraction:g})")
        if calibration[cls] < rule.min_per_class:
            short.append(f"the calibration part has {calibration[cls]} {cls} patients and needs {rule.min_per_class}")
    return {"rule": rule.text(), "needed_in_verification": need, "needed_in_calibration": rule.min_per_class,
            "verification": verification, "calibration": calibration, "enough": not short, "short": short}


def hanley_mcneil_se(auc: float, n_positive: int, n_negative: int) -> float:
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_positive - 1) * (q1 - auc ** 2) + (n_negative - 1) * (q2 - auc ** 2)) \
        / (n_positive * n_negative)
    return math.sqrt(max(variance, 0.0))


def detectable_auc_difference(auc: float, n_positive: int, n_negative: int) -> dict:
    if n_positive < 1 or n_negative < 1:
        return {"difference": None, "why": "the verification part lacks a class"}
    se = hanley_mcneil_se(auc, n_positive, n_negative)
    return {"difference": (Z95 + Z80) * se, "standard_error": se, "at_auc": auc,
            "patients": {"positive": n_positive, "negative": n_negative},
            "method": "(z_0.975 + z_0.80) x Hanley-McNeil SE at the measured AUC: the smallest distance from a fixed "
                      "reference AUC a two-sided 5% test detects with 80% power"}
