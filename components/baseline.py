"""Two baselines per modality that a CNN must beat, evaluated exactly like the CNNs.

- ``majority``: every record gets the train split's positive rate and is called the majority
  class (the "always normal" answer that already scores .83 accuracy on the MIAS crops).
- ``histogram``: a logistic regression on each image's intensity (grayscale) or colour (RGB)
  histogram and channel means and spreads, after the modality's own preprocessing. It sees no
  shape at all, so a CNN that only comes close to it is likely reading a shortcut (stain,
  scanner, gain) rather than the lesion. Its regularisation C is chosen on validation AUC.

With several sources (sites, datasets), the shortcut check runs per source too:
- ``source_prior``: every record gets its source's train positive rate. It knows nothing but
  where an image came from; the share of a CNN's pooled AUC that this reaches is what knowing
  the source alone buys, and per source it is 0.5 by construction;
- ``shortcut.json``: can the source be told from the image? A logistic regression on the same
  histogram features predicts the source (trained on train, C on validation, AUC on test).

All go through ``components.scoring.report``: temperature and threshold fitted on validation,
cluster-bootstrap intervals on test, pooled and per source. Writes ``<out>/majority/``,
``<out>/histogram/`` (and ``<out>/source_prior/``), each an evaluation folder
(``metrics.json``, ``predictions.csv``, pictures).

    python -m components.baseline --splits DIR --modality M --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from components.core import artifacts, catalog, cli
from components.evaluation import scoring
from components.evaluation import predictions
from components.evaluation import stats
from components.core.atomic import staged_dir

BASELINES = ("majority", "histogram", "source_prior")
SHORTCUT = artifacts.SHORTCUT
IMAGE_SIZE = 64          # histograms barely change with size; small keeps it fast
BINS = 32
C_GRID = (0.01, 0.1, 1.0, 10.0)


def channels_of(images: np.ndarray) -> int:
    """1 when every image is grey (its three channels equal), else 3. Decided on the train
    split and used for every split, so all get the same features (a BUSI test split may hold
    no colour overlay while its train split does)."""
    return 1 if np.array_equal(images[..., 0], images[..., 2]) else 3


def features_of(images: np.ndarray, channels: int) -> np.ndarray:
    """[N, S, S, 3] in 0..255 -> per-channel normalised histograms, means and standard
    deviations of the first ``channels`` channels."""
    rows = []
    for image in images:
        parts = []
        for c in range(channels):
            values = image[..., c].ravel()
            hist, _ = np.histogram(values, bins=BINS, range=(0, 256))
            parts += [hist / values.size, [values.mean() / 255, values.std() / 255]]
        rows.append(np.concatenate(parts))
    return np.asarray(rows)


def load(split_dir: Path, modality: str):
    """(images [N, S, S, 3], Scored with placeholder probabilities) of every record of a split."""
    from components.model import inputs

    images, labels, ids, patients, sources = [], [], [], [], []
    for x, y, source_id, patient, source in inputs.dataset(split_dir, modality, IMAGE_SIZE, 256, training=False,
                                                         with_ids=True):
        images.append(x.numpy())
        labels.append(y.numpy().astype(int))
        ids += [s.decode() for s in source_id.numpy()]
        patients += [s.decode() for s in patient.numpy()]
        sources += [s.decode() for s in source.numpy()]
    y = np.concatenate(labels)
    return np.concatenate(images), predictions.Scored(y, np.zeros(len(y)), ids, patients, sources)


def _logistic(c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def source_classifier(features: dict, scored: dict) -> dict:
    """How well the histogram features tell the source: C chosen on validation, ROC-AUC on test
    (one-vs-rest, macro-averaged, beyond two sources)."""
    from sklearn.metrics import roc_auc_score

    names = sorted(set(scored["train"].sources))
    target = {split: np.array([names.index(s) for s in scored[split].sources]) for split in scored}

    def auc(model, split):
        proba = model.predict_proba(features[split])
        return float(roc_auc_score(target[split], proba[:, 1] if len(names) == 2 else proba, multi_class="ovr"))

    fitted = {c: _logistic(c).fit(features["train"], target["train"]) for c in C_GRID}
    best = max(C_GRID, key=lambda c: auc(fitted[c], "validation"))
    return {"sources": names, "features": f"{BINS}-bin intensity/colour histograms, means and SDs",
            "C": best, "test_auc": auc(fitted[best], "test"), "validation_auc": auc(fitted[best], "validation")}


def run(splits: str | Path, modality: str, out: str | Path, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
        seed: int = 0) -> dict:
    from components.core.atomic import write_json

    catalog.modality(modality)
    splits = Path(splits)
    loaded = {name: load(splits / name, modality) for name in ("train", "validation", "test")}
    channels = channels_of(loaded["train"][0])
    features = {name: features_of(x, channels) for name, (x, _) in loaded.items()}
    scored = {name: s for name, (_, s) in loaded.items()}
    train, validation, test = scored["train"], scored["validation"], scored["test"]
    fitted = {c: _logistic(c).fit(features["train"], train.y) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: stats.at_threshold(
        validation.y, fitted[c].predict_proba(features["validation"])[:, 1], 0.5)["roc_auc"])
    histogram = fitted[best_c]
    prevalence = float(train.y.mean())
    by_source = {s: float(train.y[np.array(train.sources) == s].mean()) for s in sorted(set(train.sources))}

    def prior(split):
        return np.array([by_source.get(s, prevalence) for s in scored[split].sources])

    scores = {
        "majority": (np.full(len(validation.y), prevalence), np.full(len(test.y), prevalence)),
        "histogram": (histogram.predict_proba(features["validation"])[:, 1], histogram.predict_proba(features["test"])[:, 1]),
    }
    notes = {"majority": f"constant train prevalence {prevalence:.3f}",
             "histogram": f"logistic regression on {BINS}-bin histograms + means/SDs, C={best_c} chosen on validation AUC"}
    if len(by_source) > 1:
        scores["source_prior"] = (prior("validation"), prior("test"))
        notes["source_prior"] = "each source's train prevalence (" + ", ".join(
            f"{s} {v:.3f}" for s, v in by_source.items()) + "): knows only where the image came from"
    results = {}
    with staged_dir(out) as stage:
        for name, (pv, ps) in scores.items():
            results[name] = scoring.report(
                f"{modality}-baseline-{name}", modality, _with(validation, pv), _with(test, ps), splits / "test",
                splits / "validation", stage / name, bootstrap=bootstrap, seed=seed,
                # the majority answer: every record the majority class (negative), whatever T is
                threshold=1.0 if name == "majority" else None, notes=notes[name])
        if len(by_source) > 1:
            write_json(stage / SHORTCUT, source_classifier(features, scored))
    return results


def _with(scored, p: np.ndarray):

    return predictions.Scored(scored.y, np.asarray(p, float), scored.ids, scored.patients, scored.sources)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.baseline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", required=True, help="output of components.split (or components.stain)")
    ap.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES)
    return ap


def _cli(args, _):
    for name, r in run(args.splits, args.modality, args.out, args.bootstrap).items():
        m = r["metrics"]["roc_auc"]
        print(f"{name}: ROC-AUC {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
