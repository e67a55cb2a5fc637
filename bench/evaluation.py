"""``python -m bench.evaluation``: one model's evaluation from its scores, side by side.

The cluster bootstrap as it was (``stats.bootstrap_reference``: one scikit-learn call per
metric and resample) against the vectorised one (``stats.bootstrap``), on the same records and
resamples, and the whole evaluation (``scoring.report``: temperature, threshold, every metric
pooled and per source with its interval, the pictures) timed. By default on the largest test
split of a study (``--predictions`` an evaluation's ``predictions.csv``), else on synthetic
scores of that size.

    python -m bench.evaluation [--predictions EVAL/predictions.csv] [--resamples 2000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import page
from components.evaluation import predictions, scoring, stats


def synthetic(records: int, patients: int, sources: int, seed: int = 0) -> predictions.Scored:
    rng = np.random.default_rng(seed)
    y = (rng.random(records) < 0.3).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.001, 0.999)
    who = rng.integers(0, patients, records)
    return predictions.Scored(y, p, [f"r{i}" for i in range(records)], [f"p{k}" for k in who],
                           [f"s{k % sources}" for k in who])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.evaluation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictions", help="an evaluation's predictions.csv (default: synthetic, 1,500 records)")
    ap.add_argument("--resamples", type=int, default=stats.BOOTSTRAP_RESAMPLES)
    args = ap.parse_args(argv)
    if args.predictions:
        test = predictions.read(Path(args.predictions))
        clusters = predictions.groups(Path(args.predictions).parent)
        where = args.predictions
    else:
        test = synthetic(1500, 4, 2)
        clusters = test.patients
        where = "synthetic scores"
    threshold = float(np.median(test.p))
    print(f"{len(test.y)} records of {len(set(clusters))} patients/groups ({where}), {args.resamples} resamples")
    started = time.perf_counter()
    old = stats.bootstrap_reference(test.y, test.p, threshold, clusters, n=args.resamples)
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    new = stats.bootstrap(test.y, test.p, threshold, clusters, n=args.resamples)
    vector_s = time.perf_counter() - started
    worst = max(abs(a - b) for m in stats.METRICS for a, b in zip(old[m], (new[m]["ci_low"], new[m]["ci_high"]))
                if np.isfinite(a))
    print(f"cluster bootstrap, loop through scikit-learn: {loop_s:7.2f} s")
    print(f"cluster bootstrap, vectorised:                {vector_s:7.2f} s   ({loop_s / vector_s:.0f}x faster; "
          f"largest interval difference {worst:.1e})")
    validation = synthetic(len(test.y) // 2, 4, len(set(test.sources)), seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        scoring.report("ultrasound-densenet121-unfrozen", "ultrasound", validation, test, Path(tmp) / "test",
                        Path(tmp) / "validation", Path(tmp) / "out", bootstrap=args.resamples)
        report_s = time.perf_counter() - started
    print(f"whole evaluation from scores (calibration, threshold, every metric pooled and per source with its "
          f"interval, pictures): {report_s:.2f} s")
    page.record("bench.evaluation", {"records": len(test.y), "resamples": args.resamples, "loop_s": round(loop_s, 2),
                                     "vectorised_s": round(vector_s, 2), "whole_evaluation_s": round(report_s, 2)},
                notes=where)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
