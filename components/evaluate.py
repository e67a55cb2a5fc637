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
from pathlib import Path

import numpy as np

from components.core import artifacts, cli
from components.core.digests import tree_sha256
from components.evaluation import scoring, stats


def run(model_dir: str | Path, examples: str | Path, threshold_from: str | Path, out: str | Path,
        target_sensitivity: float | None = None, min_f1: float = 0.70, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
        seed: int = 0, collapse_sd: float = scoring.COLLAPSED_SD, model=None) -> dict:
    """``model``: the Keras model of ``model_dir`` when the caller has it loaded already."""
    from components.model import loading, repeatable

    model_dir, examples, threshold_from = Path(model_dir), Path(examples), Path(threshold_from)
    training = artifacts.read_json(model_dir, artifacts.TRAINING)
    config = training["config"]
    modality, size = config["modality"], config["image_size"]
    model = model if model is not None else loading.load_model(model_dir)
    repeatable.flush_denormals()
    validation = scoring.score(model, threshold_from, modality, size)
    test = scoring.score(model, examples, modality, size)
    if len(np.unique(test.y)) < 2:
        raise cli.UserError(f"{examples} holds only one class; ROC-AUC and most metrics are undefined there")
    return scoring.report(training["model_name"], modality, validation, test, examples, threshold_from, out,
                  history=_history(model_dir), target_sensitivity=target_sensitivity, min_f1=min_f1,
                  bootstrap=bootstrap, seed=seed, collapse_sd=collapse_sd, model_sha256=tree_sha256(model_dir / artifacts.MODEL))


def _history(model_dir: Path) -> dict | None:
    return artifacts.read_json(model_dir, artifacts.HISTORY, default={}) or None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="output folder of components.train")
    ap.add_argument("--examples", required=True, help="records to score, e.g. SPLITS/test or an extracted dataset")
    ap.add_argument("--threshold-from", required=True, help="records the threshold is chosen on, e.g. SPLITS/validation")
    ap.add_argument("--out", required=True)
    ap.add_argument("--target-sensitivity", type=float, help="choose the threshold for this sensitivity instead of max F1")
    ap.add_argument("--min-f1", type=float, default=0.70, help="blessing rule: test F1 at least this (default 0.70)")
    ap.add_argument("--collapse-sd", type=float, default=scoring.COLLAPSED_SD,
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
