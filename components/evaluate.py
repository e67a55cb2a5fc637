"""Evaluate a trained model on any extracted or split dataset, honestly.

Everything fitted is fitted on ``--threshold-from`` (the validation split) and applied unchanged
to ``--examples`` (the test split, or an external dataset):
- temperature scaling (one parameter T, log loss minimised on validation; Guo et al. 2017): the
  probabilities reported and served are sigmoid(logit(p) / T). ECE before and after, over 10
  equal-width bins, is measured on the test records;
- the decision threshold (max F1 on the calibrated validation scores, or the highest threshold
  reaching ``--target-sensitivity``). The report this product grew from tuned its threshold on
  the test set, which flatters every metric; here the test set never influences it.

Confidence intervals (95 %) come from a cluster bootstrap that resamples whole patients (the
split's groups: near-duplicate BUSI frames count as one), ``--bootstrap`` resamples (2,000 by
default), because records of one patient are not independent.

Writes ``metrics.json`` (accuracy, balanced accuracy, precision, recall = sensitivity,
specificity, F1, ROC-AUC, PR-AUC, Brier score, each with its interval; sensitivity at
specificity 0.80; calibration; per-patient results), ``predictions.csv`` (for paired
comparisons), ``roc.png``, ``confusion_matrix.png``, ``calibration.png``,
``learning_curves.png`` and ``blessing.json`` (blessed when test F1 >= ``--min-f1``, default
0.70, the report's requirement).

    python -m components.evaluate --model DIR --examples DIR --threshold-from DIR --out DIR
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from components import artifacts, catalog, cli, stats
from components.atomic import staged_dir, write_json, write_text


def score(model, split_dir: Path, modality: str, image_size: int, batch_size: int = 64):
    """(labels, probabilities, source ids, patient ids) of every record in ``split_dir``."""
    from components import data

    ys, ps, sources, patients = [], [], [], []
    ds = data.dataset(split_dir, modality, image_size, batch_size, training=False, with_ids=True)
    for images, labels, source, patient in cli.progress(ds, desc=f"score {split_dir.name}", unit="batch"):
        ps.append(np.asarray(model(images, training=False), dtype=np.float64).reshape(-1))
        ys.append(labels.numpy().astype(int))
        sources += [s.decode() for s in source.numpy()]
        patients += [s.decode() for s in patient.numpy()]
    return np.concatenate(ys), np.concatenate(ps), sources, patients


def clusters_of(split_dir: Path, patients: list[str]) -> list[str]:
    """The bootstrap's unit for each record: the group its patient was split with (from the
    split's ``patients.csv``, beside the split folder), else the patient itself."""
    table = split_dir.parent / artifacts.PATIENTS
    groups = {}
    if table.exists():
        with table.open(newline="") as f:
            groups = {r["patient_id"]: r.get("group") or r["patient_id"] for r in csv.DictReader(f)}
    return [groups.get(patient, patient) for patient in patients]


def per_patient(y, p, patients, threshold) -> list[dict]:
    rows = []
    for patient in sorted(set(patients)):
        idx = np.array([i for i, q in enumerate(patients) if q == patient])
        rows.append({"patient_id": patient, "records": len(idx), "positives": int(y[idx].sum()),
                     "mean_probability": round(float(p[idx].mean()), 4),
                     "accuracy": round(float(((p[idx] >= threshold) == y[idx]).mean()), 4)})
    return rows


def plots(out: Path, y, p, threshold, label_names, history: dict | None, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name=title)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y, (p >= threshold).astype(int), labels=[0, 1],
                                            display_labels=list(label_names), ax=ax, colorbar=False)
    ax.set_title(f"threshold {threshold:.3f} (from validation)", fontsize=9)
    save(fig, "confusion_matrix.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, ax=ax, name=title)
    save(fig, "calibration.png")
    if history:
        keys = [k for k in ("loss", "auc") if k in history]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            epochs = range(1, len(history[key]) + 1)
            ax.plot(epochs, history[key], "o-", label=f"train {key}")
            if f"val_{key}" in history:
                ax.plot(epochs, history[f"val_{key}"], "o-", label=f"validation {key}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "learning_curves.png")


def run(model_dir: str | Path, examples: str | Path, threshold_from: str | Path, out: str | Path,
        target_sensitivity: float | None = None, min_f1: float = 0.70, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
        seed: int = 0) -> dict:
    import keras

    from components import models  # noqa: F401  (registers BackbonePreprocess for loading)

    model_dir, examples, threshold_from = Path(model_dir), Path(examples), Path(threshold_from)
    training = artifacts.read_json(model_dir, artifacts.TRAINING)
    config = training["config"]
    modality, size = config["modality"], config["image_size"]
    model = keras.models.load_model(model_dir / artifacts.MODEL, compile=False)
    yv, pv_raw, _, _ = score(model, threshold_from, modality, size)
    y, p_raw, sources, patients = score(model, examples, modality, size)
    if len(np.unique(y)) < 2:
        raise cli.UserError(f"{examples} holds only one class; ROC-AUC and most metrics are undefined there")
    return report(training["model_name"], modality, yv, pv_raw, y, p_raw, sources, patients, examples,
                  threshold_from, out, history=_history(model_dir), target_sensitivity=target_sensitivity,
                  min_f1=min_f1, bootstrap=bootstrap, seed=seed)


def _history(model_dir: Path) -> dict | None:
    return artifacts.read_json(model_dir, artifacts.HISTORY, default={}) or None


def report(model_name: str, modality: str, yv, pv_raw, y, p_raw, sources, patients, examples: Path,
           threshold_from: Path, out, history=None, target_sensitivity: float | None = None, min_f1: float = 0.70,
           bootstrap: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0, threshold: float | None = None,
           notes: str = "") -> dict:
    """Calibrate and choose the threshold on the validation scores (yv, pv_raw), measure the
    test scores (y, p_raw) with cluster-bootstrap intervals, and write the evaluation folder.
    Shared by the CNNs and the baselines."""
    temperature = stats.fit_temperature(yv, pv_raw)
    pv, p = stats.apply_temperature(pv_raw, temperature), stats.apply_temperature(p_raw, temperature)
    if threshold is None:
        threshold = stats.choose_threshold(yv, pv, target_sensitivity)
    clusters = clusters_of(examples, patients)
    metrics = stats.bootstrap(y, p, threshold, clusters, n=bootstrap, seed=seed)
    label_names = catalog.modality(modality).label_names
    result = {
        "model_name": model_name, "examples": str(examples.resolve()), "records": int(len(y)),
        "positives": int(y.sum()), "clusters": len(set(clusters)), "threshold": threshold,
        "threshold_rule": f"sensitivity >= {target_sensitivity}" if target_sensitivity else "max F1",
        "threshold_chosen_on": str(threshold_from.resolve()), "validation_records": int(len(yv)),
        "metrics": metrics, "sensitivity_at_specificity_0.80": stats.sensitivity_at_specificity(y, p, 0.80),
        "confidence": "95% percentile cluster bootstrap (whole patients / near-duplicate groups resampled)",
        "bootstrap_resamples": bootstrap,
        "temperature": {"value": temperature, "fitted_on": str(threshold_from.resolve()),
                        "ece_before": stats.calibration(y, p_raw)["ece"], "ece_after": stats.calibration(y, p)["ece"]},
        "calibration": stats.calibration(y, p),
        "per_patient": per_patient(y, p, patients, threshold),
        **({"notes": notes} if notes else {}),
    }
    blessed = metrics["f1"]["value"] >= min_f1
    with staged_dir(out) as stage:
        write_json(stage / artifacts.METRICS, result)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source_id", "patient_id", "group", "label", "probability"])
        w.writerows(sorted(zip(sources, patients, clusters, y.tolist(), [f"{v:.6f}" for v in p])))
        write_text(stage / artifacts.PREDICTIONS, buf.getvalue())
        plots(stage, y, p, threshold, label_names, history, model_name)
        write_json(stage / artifacts.BLESSING, {
            "blessed": bool(blessed), "rule": f"test F1 >= {min_f1}",
            "f1": metrics["f1"]["value"],
            "reason": (f"F1 {metrics['f1']['value']:.3f} {'>=' if blessed else '<'} {min_f1}")})
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="output folder of components.train")
    ap.add_argument("--examples", required=True, help="records to score, e.g. SPLITS/test or an extracted dataset")
    ap.add_argument("--threshold-from", required=True, help="records the threshold is chosen on, e.g. SPLITS/validation")
    ap.add_argument("--out", required=True)
    ap.add_argument("--target-sensitivity", type=float, help="choose the threshold for this sensitivity instead of max F1")
    ap.add_argument("--min-f1", type=float, default=0.70, help="blessing rule: test F1 at least this (default 0.70)")
    ap.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES, help="cluster-bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _cli(args, _):
    r = run(args.model, args.examples, args.threshold_from, args.out, args.target_sensitivity, args.min_f1,
            args.bootstrap, args.seed)
    m = r["metrics"]
    print(f"{r['model_name']} on {r['records']} records ({r['clusters']} patients), threshold {r['threshold']:.3f} "
          f"and temperature {r['temperature']['value']:.2f} (from validation):")
    for name in stats.METRICS:
        print(f"  {name:<12} {m[name]['value']:.3f}  [{m[name]['ci_low']:.3f}, {m[name]['ci_high']:.3f}]")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
