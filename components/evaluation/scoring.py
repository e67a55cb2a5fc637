"""Measuring a model honestly: scores on a split, calibration and threshold fitted on validation
only, every metric with a cluster-bootstrap interval (pooled, per source, per patient), the
collapse check and the blessing, and the evaluation folder they are written to. The evaluate step,
the baselines, the cohort ensemble and cross-validation share it."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from components.core import artifacts, catalog, cli
from components.core.atomic import staged_dir, write_json
from components.evaluation import plots, predictions, stats
from components.evaluation.predictions import Scored

# calibrated validation probabilities with a smaller standard deviation than this "barely vary"
COLLAPSED_SD = 0.01


def score(model, split_dir: Path, modality: str, image_size: int, batch_size: int = 64) -> Scored:
    """The model's probability for every record in ``split_dir``, in the split's order."""
    from components.model import inputs

    ys, ps, ids, patients, sources = [], [], [], [], []
    ds = inputs.dataset(split_dir, modality, image_size, batch_size, training=False, with_ids=True)
    for images, labels, source_id, patient, source in cli.progress(ds, desc=f"score {split_dir.name}", unit="batch"):
        ps.append(np.asarray(model(images, training=False), dtype=np.float64).reshape(-1))
        ys.append(labels.numpy().astype(int))
        ids += [s.decode() for s in source_id.numpy()]
        patients += [s.decode() for s in patient.numpy()]
        sources += [s.decode() for s in source.numpy()]
    return Scored(np.concatenate(ys), np.concatenate(ps), ids, patients, sources)


def clusters_of(split_dir: Path, patients: list[str]) -> list[str]:
    """The bootstrap's unit for each record: the group its patient was split with (from the
    split's ``patients.csv``, beside the split folder), else the patient itself."""
    table = split_dir.parent / artifacts.PATIENTS
    groups = {}
    if table.exists():
        with table.open(newline="") as f:
            groups = {r["patient_id"]: r.get("group") or r["patient_id"] for r in csv.DictReader(f)}
    return [groups.get(patient, patient) for patient in patients]


def per_patient(y, p, patients, sources, threshold) -> list[dict]:
    thresholds = np.broadcast_to(np.asarray(threshold, float), np.shape(p))
    index: dict[str, list[int]] = {}
    for i, q in enumerate(patients):
        index.setdefault(q, []).append(i)
    rows = []
    for patient in sorted(index):
        idx = np.array(index[patient])
        rows.append({"patient_id": patient, "source": sources[idx[0]], "records": len(idx),
                     "positives": int(y[idx].sum()), "mean_probability": round(float(p[idx].mean()), 4),
                     "accuracy": round(float(((p[idx] >= thresholds[idx]) == y[idx]).mean()), 4)})
    return rows


def measure(y, p, threshold, clusters, bootstrap: int, seed: int) -> dict:
    """Every metric with its cluster-bootstrap interval, sensitivity at specificity 0.80 and
    calibration, for one set of records (all of them, or one source's)."""
    both = len(np.unique(y)) == 2
    return {"records": int(len(y)), "positives": int(np.sum(y)), "clusters": len(set(clusters)),
            "metrics": stats.bootstrap(y, p, threshold, clusters, n=bootstrap, seed=seed),
            "sensitivity_at_specificity_0.80": stats.sensitivity_at_specificity(y, p, 0.80) if both else float("nan"),
            "calibration": stats.calibration(y, p)}


def drift_reference(examples: Path, validation_p: np.ndarray) -> dict:
    """What served traffic is compared with (pipelines.monitoring.drift): the train split's input statistics
    (from the split's manifest, beside ``examples``) and the calibrated validation probabilities."""
    from components.imaging import inputstats

    manifest = artifacts.read_json(examples.parent, artifacts.MANIFEST, default={})
    return {"inputs": manifest.get("input_reference", {}).get("train", {}), "inputs_from": "train split",
            "probability": {"buckets": list(inputstats.BUCKETS["probability"]),
                            "counts": inputstats.counts(validation_p, "probability")},
            "probability_from": "validation split, calibrated"}


def collapse(validation_p: np.ndarray, temperature: float, min_sd: float = COLLAPSED_SD) -> str | None:
    """Why a model's answers carry no information, or None: its calibrated validation
    probabilities barely vary (SD below ``min_sd``), or no temperature below the fitting bound
    explains them. ``min_sd`` 0 turns the check off (demos and plumbing tests of one epoch)."""
    if min_sd <= 0:
        return None
    spread = float(np.std(validation_p))
    if spread < min_sd:
        return (f"collapsed: its calibrated validation probabilities barely vary (SD {spread:.4f} < {min_sd}); "
                "it answers about the same for every image")
    if stats.temperature_at_upper_bound(temperature):
        return (f"collapsed: its temperature {temperature:.3g} sits at the fitting bound "
                f"{stats.TEMPERATURE_BOUNDS[1]:.3g}: no scaling explains its scores")
    return None


def report(model_name: str, modality: str, validation: Scored, test: Scored, examples: Path, threshold_from: Path,
           out, history=None, target_sensitivity: float | None = None, min_f1: float = 0.70,
           bootstrap: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0, threshold: float | None = None,
           temperature: float | None = None, notes: str = "", collapse_sd: float = COLLAPSED_SD, **extra) -> dict:
    """Calibrate and choose the threshold on the validation scores, measure the test scores with
    cluster-bootstrap intervals (pooled and per source), judge the blessing and write the
    evaluation folder. Shared by the CNNs, the baselines and the cohort ensemble (which passes
    ``temperature=1``: its members are calibrated already)."""
    if temperature is None:
        temperature = stats.fit_temperature(validation.y, validation.p)
    val, cal = validation.calibrated(temperature), test.calibrated(temperature)
    if threshold is None:
        threshold = stats.choose_threshold(val.y, val.p, target_sensitivity)
    result = {
        "model_name": model_name,
        "threshold": threshold,
        "threshold_rule": f"sensitivity >= {target_sensitivity}" if target_sensitivity else "max F1",
        "threshold_chosen_on": str(Path(threshold_from).resolve()), "validation_records": int(len(val.y)),
        "temperature": {"value": temperature, "fitted_on": str(Path(threshold_from).resolve()),
                        "ece_before": stats.calibration(test.y, test.p)["ece"],
                        "ece_after": stats.calibration(cal.y, cal.p)["ece"]},
        **extra, **({"notes": notes} if notes else {}),
    }
    clusters = clusters_of(Path(examples), cal.patients)
    result = measured(result, cal, threshold, clusters, examples, bootstrap, seed)
    result["drift_reference"] = drift_reference(Path(examples), val.p)
    collapsed = collapse(val.p, temperature, collapse_sd)
    f1 = result["metrics"]["f1"]["value"]
    blessed = f1 >= min_f1 and collapsed is None
    reason = collapsed or f"F1 {f1:.3f} {'>=' if f1 >= min_f1 else '<'} {min_f1}"
    write_evaluation(out, result, cal, clusters, threshold, modality, history, validation=val,
                     blessing={"blessed": bool(blessed), "rule": f"test F1 >= {min_f1} and not collapsed",
                               "f1": f1, "collapsed": collapsed is not None, "reason": reason})
    return result


def measured(result: dict, scored: Scored, threshold, clusters: list[str], examples: Path, bootstrap: int,
             seed: int) -> dict:
    """``result`` with the test figures: pooled, per source, per patient."""
    pooled = measure(scored.y, scored.p, threshold, clusters, bootstrap, seed)
    names = sorted(set(scored.sources))
    by_source = {}
    for name in names:
        mask = np.array(scored.sources) == name
        part = scored.subset(mask)
        by_source[name] = measure(part.y, part.p, np.asarray(threshold)[mask] if np.ndim(threshold) else threshold,
                                  [c for c, m in zip(clusters, mask) if m], bootstrap, seed)
    return {"model_name": result["model_name"], "examples": str(Path(examples).resolve()), **pooled, **result,
            "confidence": "95% percentile cluster bootstrap (whole patients / near-duplicate groups resampled)",
            "bootstrap_resamples": bootstrap, "sources": by_source,
            "per_patient": per_patient(scored.y, scored.p, scored.patients, scored.sources, threshold)}


def write_evaluation(out, result: dict, scored: Scored, clusters: list[str], threshold, modality: str, history=None,
                     validation: Scored | None = None, blessing: dict | None = None) -> None:
    with staged_dir(out) as stage:
        write_json(stage / artifacts.METRICS, result)
        predictions.write(stage / artifacts.PREDICTIONS, scored, clusters)
        if validation is not None:
            predictions.write(stage / artifacts.VALIDATION_PREDICTIONS, validation, validation.patients)
        plots.draw(stage, scored, threshold, catalog.modality(modality).label_names, history, result["model_name"])
        if blessing is not None:
            write_json(stage / artifacts.BLESSING, blessing)
