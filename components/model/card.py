"""The model card: a machine-readable record of what a served model is, what it was trained and
measured on, and how its threshold was chosen. Written by the export step into
``assets.extra/model_card.json``; the model repository checks it against its schema on push."""
from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

from components.core import artifacts, catalog


def code_version() -> str:
    """The checkout's ``git describe``, or the installed distribution's version."""
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            return rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"bcimaging {version('bcimaging')}"
    except PackageNotFoundError:
        return "unknown"


def build(training: dict, evaluation: dict, blessing: dict, ensemble: dict | None = None) -> dict:
    config = training["config"]
    spec = catalog.modality(config["modality"])
    return {
        "model_name": training["model_name"], "modality": spec.name, "backbone": config["backbone"],
        "strategy": config["strategy"], "label_names": list(spec.label_names), "image_size": config["image_size"],
        "profile": config.get("profile", ""),
        "threshold": evaluation["threshold"], "threshold_rule": evaluation["threshold_rule"],
        "threshold_chosen_on": evaluation["threshold_chosen_on"],
        "test_metrics": evaluation["metrics"], "test_records": evaluation["records"],
        "test_metrics_by_source": {name: {"records": s["records"], "positives": s["positives"],
                                          "metrics": s["metrics"], "calibration_ece": s["calibration"]["ece"]}
                                   for name, s in evaluation.get("sources", {}).items()},
        "test_positives": evaluation["positives"], "confidence": evaluation["confidence"],
        "calibration_ece": evaluation["calibration"]["ece"], "temperature": evaluation.get("temperature"),
        "clusters": evaluation.get("clusters"), "blessing": blessing,
        "stain_normalization": training.get("stain"),
        "data": {"splits": training["splits"], "split_content_sha256": training["split_manifest"],
                 "train_examples": training["train_examples"]},
        "training": {**config, "epochs_run": training["epochs_run"], "class_weights": training["class_weights"],
                     "stages": training["stages"], "best_val_auc": training["best_val_auc"],
                     "tensorflow": training["tensorflow"], "keras": training["keras"]},
        "code_version": code_version(),
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "signatures": {"serving_default": "image_bytes -> probability, label, threshold",
                       "explain": "image_bytes -> heatmap (Grad-CAM), probability"},
        "intended_use": "research decision support; not a diagnostic device",
        **({"cohort_ensemble": ensemble} if ensemble else {}),
        **({"drift_reference": evaluation["drift_reference"]} if evaluation.get("drift_reference") else {}),
    }


def ensemble_entry(ensemble_dir: str | Path) -> dict:
    """What a member's model card says of its cohort's ensemble (the ensemble step's output folder)."""
    record = artifacts.read_json(ensemble_dir, artifacts.ENSEMBLE)
    metrics = artifacts.read_json(ensemble_dir, artifacts.METRICS)
    return {**record, "threshold_rule": metrics["threshold_rule"], "threshold_chosen_on": metrics["threshold_chosen_on"],
            "test_metrics": {k: metrics["metrics"][k] for k in ("roc_auc", "balanced_accuracy", "f1")}}
