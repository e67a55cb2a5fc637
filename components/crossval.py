"""Patient-level k-fold cross-validation, for a modality whose test split holds too few patients
to measure anything (the IDC subset: 16 patients, ten with both classes).

``folds``: every patient (or near-duplicate group) is in exactly one test fold; the folds are
stratified by the patient's labels within each source (the split's greedy balance, one patient
of each class per fold first, ``components.split.assign_groups``). Fold i is a split folder
like ``components.split``'s: its test split is fold i, and the other folds' patients are split
patient-wise into train and validation (the same 70 : 15 ratio as the main split), so early
stopping, temperature and threshold never see fold i. Writes ``fold-<i>/`` and ``folds.json``
(which patients each fold tested).

``pool``: the k evaluations of one configuration (each on its own test fold, calibrated and
thresholded on its own validation split) pooled into one out-of-fold evaluation that covers
every patient exactly once, measured like a test split (cluster bootstrap, per source, per
patient); a record's label is called at its own fold's threshold.

    python -m components.crossval folds --examples DIR --out DIR [--folds 4 --seed 0]
    python -m components.crossval pool EVAL_DIR [EVAL_DIR ...] --out DIR
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

from components.core import artifacts, cli
from components.evaluation import scoring
from components.evaluation import predictions
from components import split
from components.evaluation import stats
from components.core.atomic import staged_dir, write_json

FOLDS = artifacts.FOLDS
DEFAULT_FOLDS = 4
VALIDATION_SHARE = 0.15 / 0.85          # of the patients outside the test fold, as in the main split


def fold_name(i: int) -> str:
    return f"fold-{i}"


def assign_folds(ex: split.Examples, k: int, seed: int) -> dict[str, int]:
    """group -> its test fold, balanced per source and class (``split.assign_groups``)."""
    group_source, counts = split.group_table(ex)
    folds = {}
    for source in sorted(set(group_source.values())):
        mine = {g: c for g, c in counts.items() if group_source[g] == source}
        if len(mine) < k:
            raise cli.UserError(f"source {source} has {len(mine)} patients/groups, fewer than {k} folds")
        folds.update(split.assign_groups(mine, (1.0 / k,) * k, seed))
    return folds


def folds(examples: str | Path, out: str | Path, k: int = DEFAULT_FOLDS, seed: int = 0,
          near_duplicate_r: float | None = None) -> dict:
    if k < 2:
        raise ValueError(f"--folds {k}: cross-validation needs at least 2 folds")
    ex = split.load(examples, near_duplicate_r)
    fold_of = assign_folds(ex, k, seed)
    group_source, counts = split.group_table(ex)
    summary = {"modality": ex.spec.name, "folds": k, "seed": seed, "records": len(ex.metas),
               "patients": len({m.patient_id for m in ex.metas}), "fold_rule":
               "test folds balanced per source and class; train/validation of the rest patient-wise (15/85)",
               "tested": []}
    with staged_dir(out) as stage:
        for i in range(k):
            rest = {g: c for g, c in counts.items() if fold_of[g] != i}
            inner = {}
            for source in sorted(set(group_source.values())):
                mine = {g: c for g, c in rest.items() if group_source[g] == source}
                inner.update(split.assign_groups(mine, (1 - VALIDATION_SHARE, VALIDATION_SHARE), seed + 1 + i))
            split_of = [2 if fold_of[g] == i else inner[g] for g in ex.groups]
            rest_share = 1 - 1 / k
            fractions = (rest_share * (1 - VALIDATION_SHARE), rest_share * VALIDATION_SHARE, 1 / k)
            manifest = split.write_splits(examples, ex, split_of, stage / fold_name(i), seed, fractions,
                                          {"fold": i, "folds": k, "assignment_rule": summary["fold_rule"]})
            test_patients = sorted({m.patient_id for m, s in zip(ex.metas, split_of) if s == 2})
            summary["tested"].append({"fold": i, "patients": test_patients,
                                      "records": manifest["splits"]["test"]["records"],
                                      "labels": manifest["splits"]["test"]["labels"]})
        write_json(stage / FOLDS, summary)
    return summary


def pool(evaluation_dirs: list[str | Path], out: str | Path, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
         seed: int = 0) -> dict:
    """One out-of-fold evaluation from the folds' evaluations of one model configuration."""
    dirs = [Path(d) for d in evaluation_dirs]
    parts = [(artifacts.read_json(d, artifacts.METRICS), predictions.read(d / artifacts.PREDICTIONS),
              predictions.groups(d)) for d in dirs]
    names = {m["model_name"] for m, _, _ in parts}
    if len(names) != 1:
        raise cli.UserError(f"the folds evaluated different models {sorted(names)}; pool one configuration")
    seen = collections.Counter(i for _, s, _ in parts for i in s.ids)
    twice = [i for i, n in seen.items() if n > 1]
    if twice:
        raise cli.UserError(f"{len(twice)} records are in more than one fold's test split (e.g. {twice[0]}); "
                            "pool the evaluations of one set of folds")
    patients = collections.defaultdict(set)
    for k, (_, s, _) in enumerate(parts):
        for q in s.patients:
            patients[q].add(k)
    shared = [q for q, ks in patients.items() if len(ks) > 1]
    if shared:
        raise cli.UserError(f"patient {shared[0]} was tested in several folds; folds must hold whole patients")
    scored = predictions.Scored(np.concatenate([s.y for _, s, _ in parts]), np.concatenate([s.p for _, s, _ in parts]),
                             [i for _, s, _ in parts for i in s.ids], [q for _, s, _ in parts for q in s.patients],
                             [x for _, s, _ in parts for x in s.sources])
    thresholds = np.concatenate([np.full(len(s.y), m["threshold"]) for m, s, _ in parts])
    clusters = [g for _, _, groups in parts for g in groups]
    name = names.pop()
    modality = name.split("-", 1)[0]
    per_fold = [{"fold": k, "patients": len(set(s.patients)), "records": int(len(s.y)), "positives": int(s.y.sum()),
                 "threshold": m["threshold"], "temperature": m["temperature"]["value"],
                 "roc_auc": m["metrics"]["roc_auc"]["value"], "balanced_accuracy": m["metrics"]["balanced_accuracy"]["value"]}
                for k, (m, s, _) in enumerate(parts)]
    result = {"model_name": f"{name} (out-of-fold)", "evaluated_model": name, "folds": per_fold,
              "threshold": [f["threshold"] for f in per_fold],
              "threshold_rule": "each fold's own, chosen on that fold's validation split (max F1)",
              "threshold_chosen_on": [m["threshold_chosen_on"] for m, _, _ in parts],
              "pooling": "out-of-fold predictions of every fold, every patient once; labels at each fold's threshold"}
    result = scoring.measured(result, scored, thresholds, clusters, Path(parts[0][0]["examples"]), bootstrap, seed)
    scoring.write_evaluation(out, result, scored, clusters, thresholds, modality)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.crossval", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("folds", help="k patient-wise folds, each a split folder")
    f.add_argument("--examples", required=True, help="folder of TFRecords from components.extract")
    f.add_argument("--out", required=True)
    f.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    f.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pool", help="pool the folds' evaluations into one out-of-fold evaluation")
    p.add_argument("evaluations", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES)
    return ap


def _cli(args, _):
    if args.command == "folds":
        summary = folds(args.examples, args.out, args.folds, args.seed)
        print(json.dumps([{"fold": t["fold"], "patients": len(t["patients"]), "records": t["records"]}
                          for t in summary["tested"]]))
    else:
        r = pool(args.evaluations, args.out, args.bootstrap)
        m = r["metrics"]
        print(f"{r['model_name']}: {r['records']} records of {r['clusters']} patients; ROC-AUC "
              f"{m['roc_auc']['value']:.3f} [{m['roc_auc']['ci_low']:.3f}, {m['roc_auc']['ci_high']:.3f}], "
              f"balanced accuracy {m['balanced_accuracy']['value']:.3f}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
