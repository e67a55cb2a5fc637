"""Two baselines per modality that a CNN must beat, evaluated exactly like the CNNs.

- ``majority``: every record gets the train split's positive rate and is called the majority
  class (the "always normal" answer that already scores .83 accuracy on the MIAS crops).
- ``histogram``: a logistic regression on each image's intensity (grayscale) or colour (RGB)
  histogram and channel means and spreads, after the modality's own preprocessing. It sees no
  shape at all, so a CNN that only comes close to it is likely reading a shortcut (stain,
  scanner, gain) rather than the lesion. Its regularisation C is chosen on validation AUC.

Both go through ``components.evaluate.report``: temperature and threshold fitted on validation,
cluster-bootstrap intervals on test. Writes ``<out>/majority/`` and ``<out>/histogram/``, each
an evaluation folder (``metrics.json``, ``predictions.csv``, pictures).

    python -m components.baseline --splits DIR --modality M --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from components import catalog, cli, stats
from components.atomic import staged_dir

BASELINES = ("majority", "histogram")
IMAGE_SIZE = 64          # histograms barely change with size; small keeps it fast
BINS = 32
C_GRID = (0.01, 0.1, 1.0, 10.0)


def channels_of(images: np.ndarray) -> int:
    """1 when every image is grey (its three channels equal), else 3. Decided on the train
    split and used for every split, so all get the same features (a BUSI test split may hold
    no colour overlay while its train split does)."""
    return 1 if np.array_equal(images[..., 0], images[..., 2]) else 3


def features(images: np.ndarray, channels: int) -> np.ndarray:
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
    from components import data

    images, labels, sources, patients = [], [], [], []
    for x, y, source, patient in data.dataset(split_dir, modality, IMAGE_SIZE, 256, training=False, with_ids=True):
        images.append(x.numpy())
        labels.append(y.numpy().astype(int))
        sources += [s.decode() for s in source.numpy()]
        patients += [s.decode() for s in patient.numpy()]
    return np.concatenate(images), np.concatenate(labels), sources, patients


def run(splits: str | Path, modality: str, out: str | Path, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
        seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from components import evaluate

    catalog.modality(modality)
    splits = Path(splits)
    loaded = {name: load(splits / name, modality) for name in ("train", "validation", "test")}
    (xt, yt, _, _), (xv, yv, _, _), (xs, ys, sources, patients) = (loaded[n] for n in ("train", "validation", "test"))
    channels = channels_of(xt)
    ft, fv, fs = (features(x, channels) for x in (xt, xv, xs))

    def fitted(c):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        return model.fit(ft, yt)

    best_c = max(C_GRID, key=lambda c: stats.at_threshold(yv, fitted(c).predict_proba(fv)[:, 1], 0.5)["roc_auc"])
    histogram = fitted(best_c)
    prevalence = float(yt.mean())
    scores = {
        "majority": (np.full(len(yv), prevalence), np.full(len(ys), prevalence)),
        "histogram": (histogram.predict_proba(fv)[:, 1], histogram.predict_proba(fs)[:, 1]),
    }
    results = {}
    with staged_dir(out) as stage:
        for name in BASELINES:
            pv, ps = scores[name]
            results[name] = evaluate.report(
                f"{modality}-baseline-{name}", modality, yv, pv, ys, ps, sources, patients, splits / "test",
                splits / "validation", stage / name, bootstrap=bootstrap, seed=seed,
                # the majority answer: every record the majority class (negative), whatever T is
                threshold=1.0 if name == "majority" else None,
                notes={"majority": f"constant train prevalence {prevalence:.3f}",
                       "histogram": f"logistic regression on {BINS}-bin histograms + means/SDs, C={best_c} "
                                    "chosen on validation AUC"}[name])
    return results


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
