"""``predictions.csv``: a model's calibrated probability for every record it was scored on, with
what identifies the record (its id, patient, bootstrap group and source). The one writer and
reader of the file; the paired tests, the cohort ensemble, cross-validation pooling, the
champion-challenger step and the study's tables all read it here."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.core import artifacts
from components.core.atomic import write_text
from components.evaluation import stats

COLUMNS = ["source_id", "patient_id", "group", "source", "label", "probability"]


@dataclass
class Scored:
    """A model's scores on a set of records, with what identifies each record."""
    y: np.ndarray                 # labels 0/1
    p: np.ndarray                 # probabilities
    ids: list[str]                # source_id
    patients: list[str]
    sources: list[str]            # the data source's name

    def calibrated(self, temperature: float) -> "Scored":
        return Scored(self.y, stats.apply_temperature(self.p, temperature), self.ids, self.patients, self.sources)

    def subset(self, mask: np.ndarray) -> "Scored":
        keep = np.nonzero(mask)[0]
        return Scored(self.y[keep], self.p[keep], [self.ids[i] for i in keep], [self.patients[i] for i in keep],
                      [self.sources[i] for i in keep])


def write(path: Path, scored: Scored, clusters: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    w.writerows(sorted(zip(scored.ids, scored.patients, clusters, scored.sources, scored.y.tolist(),
                           [f"{v:.6f}" for v in scored.p])))
    write_text(path, buf.getvalue())


def _rows(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def read(path: Path) -> Scored:
    """A predictions file (``predictions.csv``, ``validation_predictions.csv``) in the file's order."""
    rows = _rows(path)
    return Scored(np.array([int(r["label"]) for r in rows], dtype=int), np.array([float(r["probability"]) for r in rows]),
                  [r["source_id"] for r in rows], [r["patient_id"] for r in rows], [r.get("source", "") for r in rows])


def groups(evaluation_dir: Path) -> list[str]:
    """The bootstrap cluster (patient or near-duplicate group) of each row of an evaluation's
    ``predictions.csv``, in the file's order (that of ``read``)."""
    return [r.get("group") or r["patient_id"] for r in _rows(Path(evaluation_dir) / artifacts.PREDICTIONS)]


def by_id(evaluation_dir: Path) -> tuple[str, dict[str, tuple[int, float]]]:
    """The evaluated model's name and its test ``source_id -> (label, probability)``."""
    name = artifacts.read_json(evaluation_dir, artifacts.METRICS)["model_name"]
    scored = read(Path(evaluation_dir) / artifacts.PREDICTIONS)
    return name, {i: (int(y), float(p)) for i, y, p in zip(scored.ids, scored.y, scored.p)}


def groups_of(evaluation_dir: Path, ids: list[str]) -> list[str]:
    """The cluster (patient or near-duplicate group) of each record, in the order of ``ids``."""
    rows = _rows(Path(evaluation_dir) / artifacts.PREDICTIONS)
    group = {r["source_id"]: r.get("group") or r["patient_id"] for r in rows}
    return [group[i] for i in ids]
