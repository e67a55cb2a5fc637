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
default), because records of one patient are not independent. Every metric is given pooled and
per source (site, dataset): a threshold chosen on the pooled validation split may not travel to
another hospital, and the per-source sensitivity and specificity show whether it does.

Writes ``metrics.json`` (accuracy, balanced accuracy, precision, recall = sensitivity,
specificity, F1, ROC-AUC, PR-AUC, Brier score, each with its interval; sensitivity at
specificity 0.80; calibration; the same per source; per-patient results),
``predictions.csv`` and ``validation_predictions.csv`` (calibrated; for paired comparisons and
the cohort ensemble), ``roc.png``, ``confusion_matrix.png``, ``calibration.png``,
``learning_curves.png`` and ``blessing.json``: blessed when test F1 >= ``--min-f1`` (default
0.70, the report's requirement) and the model has not collapsed (its calibrated validation
probabilities barely vary, or its temperature sits at the fitting bound: such a model answers
about the same for every image).

    python -m components.evaluate --model DIR --examples DIR --threshold-from DIR --out DIR
"""
from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import artifacts, catalog, cli, stats
from components.atomic import staged_dir, write_json, write_text

VALIDATION_PREDICTIONS = artifacts.VALIDATION_PREDICTIONS
# calibrated validation probabilities with a smaller standard deviation than this "barely vary"
COLLAPSED_SD = 0.01
PREDICTION_COLUMNS = ["source_id", "patient_id", "group", "source", "label", "probability"]


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


def score(model, split_dir: Path, modality: str, image_size: int, batch_size: int = 64) -> Scored:
    """The model's probability for every record in ``split_dir``, in the split's order."""
    from components import data

    ys, ps, ids, patients, sources = [], [], [], [], []
    ds = data.dataset(split_dir, modality, image_size, batch_size, training=False, with_ids=True)
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
    """What served traffic is compared with (pipelines.drift): the train split's input statistics
    (from the split's manifest, beside ``examples``) and the calibrated validation probabilities."""
    from components import inputstats

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


def plots(out: Path, scored: Scored, threshold, label_names, history: dict | None, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    y, p = scored.y, scored.p
    names = sorted(set(scored.sources))
    per_source = [(n, scored.subset(np.array(scored.sources) == n)) for n in names] if len(names) > 1 else []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(y, p, ax=ax, name=f"{title} (pooled)" if per_source else title)
    for name, part in per_source:
        if len(np.unique(part.y)) == 2:
            RocCurveDisplay.from_predictions(part.y, part.p, ax=ax, name=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.legend(loc="lower right", fontsize=7)
    save(fig, "roc.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y, (p >= threshold).astype(int), labels=[0, 1],
                                            display_labels=list(label_names), ax=ax, colorbar=False)
    ax.set_title("threshold from validation" + ("" if np.ndim(threshold) else f": {float(threshold):.3f}"), fontsize=9)
    save(fig, "confusion_matrix.png")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    CalibrationDisplay.from_predictions(y, p, n_bins=10, ax=ax, name="pooled" if per_source else title)
    for name, part in per_source:
        CalibrationDisplay.from_predictions(part.y, part.p, n_bins=10, ax=ax, name=name)
    ax.legend(fontsize=7)
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
        seed: int = 0, collapse_sd: float = COLLAPSED_SD, model=None) -> dict:
    """``model``: the Keras model of ``model_dir`` when the caller has it loaded already."""
    from components import export, repeatable
    from components.records import tree_sha256

    model_dir, examples, threshold_from = Path(model_dir), Path(examples), Path(threshold_from)
    training = artifacts.read_json(model_dir, artifacts.TRAINING)
    config = training["config"]
    modality, size = config["modality"], config["image_size"]
    model = model if model is not None else export.load_model(model_dir)
    repeatable.flush_denormals()
    validation = score(model, threshold_from, modality, size)
    test = score(model, examples, modality, size)
    if len(np.unique(test.y)) < 2:
        raise cli.UserError(f"{examples} holds only one class; ROC-AUC and most metrics are undefined there")
    return report(training["model_name"], modality, validation, test, examples, threshold_from, out,
                  history=_history(model_dir), target_sensitivity=target_sensitivity, min_f1=min_f1,
                  bootstrap=bootstrap, seed=seed, collapse_sd=collapse_sd, model_sha256=tree_sha256(model_dir / artifacts.MODEL))


def _history(model_dir: Path) -> dict | None:
    return artifacts.read_json(model_dir, artifacts.HISTORY, default={}) or None


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


def write_predictions(path: Path, scored: Scored, clusters: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PREDICTION_COLUMNS)
    w.writerows(sorted(zip(scored.ids, scored.patients, clusters, scored.sources, scored.y.tolist(),
                           [f"{v:.6f}" for v in scored.p])))
    write_text(path, buf.getvalue())


def read_predictions(path: Path) -> Scored:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return Scored(np.array([int(r["label"]) for r in rows]), np.array([float(r["probability"]) for r in rows]),
                  [r["source_id"] for r in rows], [r["patient_id"] for r in rows], [r.get("source", "") for r in rows])


def read_groups(evaluation_dir: Path) -> list[str]:
    """The bootstrap cluster (patient or near-duplicate group) of each row of an evaluation's
    ``predictions.csv``, in the file's order (that of ``read_predictions``)."""
    with (Path(evaluation_dir) / artifacts.PREDICTIONS).open(newline="") as f:
        return [r.get("group") or r["patient_id"] for r in csv.DictReader(f)]


def write_evaluation(out, result: dict, scored: Scored, clusters: list[str], threshold, modality: str, history=None,
                     validation: Scored | None = None, blessing: dict | None = None) -> None:
    with staged_dir(out) as stage:
        write_json(stage / artifacts.METRICS, result)
        write_predictions(stage / artifacts.PREDICTIONS, scored, clusters)
        if validation is not None:
            write_predictions(stage / VALIDATION_PREDICTIONS, validation, validation.patients)
        plots(stage, scored, threshold, catalog.modality(modality).label_names, history, result["model_name"])
        if blessing is not None:
            write_json(stage / artifacts.BLESSING, blessing)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="output folder of components.train")
    ap.add_argument("--examples", required=True, help="records to score, e.g. SPLITS/test or an extracted dataset")
    ap.add_argument("--threshold-from", required=True, help="records the threshold is chosen on, e.g. SPLITS/validation")
    ap.add_argument("--out", required=True)
    ap.add_argument("--target-sensitivity", type=float, help="choose the threshold for this sensitivity instead of max F1")
    ap.add_argument("--min-f1", type=float, default=0.70, help="blessing rule: test F1 at least this (default 0.70)")
    ap.add_argument("--collapse-sd", type=float, default=COLLAPSED_SD,
                    help="blessing rule: refuse a model whose calibrated validation probabilities vary less (SD); 0: off")
    ap.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES, help="cluster-bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def _cli(args, _):
    r = run(args.model, args.examples, args.threshold_from, args.out, args.target_sensitivity, args.min_f1,
            args.bootstrap, args.seed, args.collapse_sd)
    m = r["metrics"]
    print(f"{r['model_name']} on {r['records']} records ({r['clusters']} patients), threshold {r['threshold']:.3f} "
          f"and temperature {r['temperature']['value']:.2f} (from validation):")
    for name in stats.METRICS:
        print(f"  {name:<12} {m[name]['value']:.3f}  [{m[name]['ci_low']:.3f}, {m[name]['ci_high']:.3f}]")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
