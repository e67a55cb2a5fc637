"""Evaluate a trained model on any extracted or split dataset, honestly.

The decision threshold is chosen on ``--threshold-from`` (the validation split: max F1, or the
highest threshold reaching ``--target-sensitivity``) and applied unchanged to ``--examples``
(the test split, or an external dataset). The report this product grew from tuned its
threshold on the test set, which flatters every metric; here the test set never influences it.

Writes ``metrics.json`` (accuracy, precision, recall = sensitivity, specificity, F1, ROC-AUC,
each with a 95 % bootstrap interval; calibration with ECE; per-patient results),
``predictions.csv`` (for paired comparisons), ``roc.png``, ``confusion_matrix.png``,
``calibration.png``, ``learning_curves.png`` and ``blessing.json`` (blessed when test F1 >=
``--min-f1``, default 0.70, the report's requirement).

    python -m components.evaluate --model DIR --examples DIR --threshold-from DIR --out DIR
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from components import catalog, cli, stats
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
        target_sensitivity: float | None = None, min_f1: float = 0.70, bootstrap: int = 1000,
        seed: int = 0) -> dict:
    import keras

    from components import models  # noqa: F401  (registers BackbonePreprocess for loading)

    model_dir, examples, threshold_from = Path(model_dir), Path(examples), Path(threshold_from)
    training = json.loads((model_dir / "training.json").read_text())
    config = training["config"]
    modality, size = config["modality"], config["image_size"]
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    yv, pv, _, _ = score(model, threshold_from, modality, size)
    threshold = stats.choose_threshold(yv, pv, target_sensitivity)
    y, p, sources, patients = score(model, examples, modality, size)
    if len(np.unique(y)) < 2:
        raise cli.UserError(f"{examples} holds only one class; ROC-AUC and most metrics are undefined there")
    metrics = stats.bootstrap(y, p, threshold, n=bootstrap, seed=seed)
    label_names = catalog.modality(modality).label_names
    history_path = model_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else None
    result = {
        "model_name": training["model_name"], "examples": str(examples.resolve()), "records": int(len(y)),
        "positives": int(y.sum()), "threshold": threshold,
        "threshold_rule": f"sensitivity >= {target_sensitivity}" if target_sensitivity else "max F1",
        "threshold_chosen_on": str(threshold_from.resolve()), "validation_records": int(len(yv)),
        "metrics": metrics, "confidence": "95% percentile bootstrap over records",
        "bootstrap_resamples": bootstrap, "calibration": stats.calibration(y, p),
        "per_patient": per_patient(y, p, patients, threshold),
    }
    blessed = metrics["f1"]["value"] >= min_f1
    with staged_dir(out) as stage:
        write_json(stage / "metrics.json", result)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source_id", "patient_id", "label", "probability"])
        w.writerows(sorted(zip(sources, patients, y.tolist(), [f"{v:.6f}" for v in p])))
        write_text(stage / "predictions.csv", buf.getvalue())
        plots(stage, y, p, threshold, label_names, history, training["model_name"])
        write_json(stage / "blessing.json", {
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
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _cli(args, _):
    r = run(args.model, args.examples, args.threshold_from, args.out, args.target_sensitivity, args.min_f1,
            args.bootstrap, args.seed)
    m = r["metrics"]
    print(f"{r['model_name']} on {r['records']} records, threshold {r['threshold']:.3f} (from validation):")
    for name in stats.METRICS:
        print(f"  {name:<12} {m[name]['value']:.3f}  [{m[name]['ci_low']:.3f}, {m[name]['ci_high']:.3f}]")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
