"""The site's patients in two parts: calibration (where the temperature and the threshold are
chosen) and verification (where they are judged). Patient-wise, so no patient's images sit on
both sides; stratified by the patient's label (positive when any of its images is), so both
parts hold both classes in the site's proportion; seeded, so a re-run splits alike."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    calibration: tuple[str, ...]        # patient pseudonyms, sorted
    verification: tuple[str, ...]
    fraction: float
    seed: int

    def masks(self, patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each image's membership: (in calibration, in verification)."""
        calibration = set(self.calibration)
        cal = np.array([p in calibration for p in patients], bool)
        return cal, ~cal


def patient_labels(patients: list[str], labels) -> dict[str, int]:
    out: dict[str, int] = {}
    for patient, label in zip(patients, labels):
        out[patient] = max(out.get(patient, 0), int(label))
    return out


def split_patients(patients: list[str], labels, fraction: float = 0.5, seed: int = 0) -> Split:
    """``fraction`` of each class's patients (rounded, at least one and at most all but one
    where the class has two or more) to calibration, the rest to verification."""
    if not 0 < fraction < 1:
        raise ValueError(f"--calibration-fraction must lie between 0 and 1, not {fraction}")
    rng = np.random.default_rng(seed)
    by_patient = patient_labels(patients, labels)
    calibration: list[str] = []
    for label in (0, 1):
        stratum = sorted(p for p, y in by_patient.items() if y == label)      # sorted: the order is the seed's only
        take = int(round(fraction * len(stratum)))
        if len(stratum) >= 2:
            take = min(max(take, 1), len(stratum) - 1)
        calibration += [stratum[i] for i in rng.permutation(len(stratum))[:take]]
    chosen = set(calibration)
    return Split(tuple(sorted(chosen)), tuple(sorted(p for p in by_patient if p not in chosen)), fraction, seed)
