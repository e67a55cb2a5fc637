"""The cohort ensemble: the mean of a cohort's three calibrated probabilities, evaluated as a
model of its own.

Each member's evaluation already holds its calibrated probabilities on validation and on test
(``validation_predictions.csv``, ``predictions.csv``: temperature fitted on validation). The
ensemble averages them record by record (it refuses members scored on different records), keeps
temperature 1 (the members are calibrated; the gateway averages the same served probabilities,
so it needs no forward pass of its own) and chooses its threshold on the averaged validation
probabilities, like any model. ``ensemble.json`` names the members and the trained models they
came from; the export puts it in every member's model card, so the gateway combines only three
answers that belong together.

    python -m components.ensemble EVAL_DIR EVAL_DIR EVAL_DIR --out DIR
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from components.core import artifacts, catalog, cli
from components.evaluation import scoring
from components.evaluation import predictions
from components.evaluation import stats
from components.core.atomic import write_json

ENSEMBLE = artifacts.ENSEMBLE


def name_of(modality: str, strategy: str) -> str:
    return f"{modality}-ensemble-{strategy}"


def _aligned(scored: list[predictions.Scored], what: str, names: list[str]) -> predictions.Scored:
    order = [np.argsort(s.ids, kind="stable") for s in scored]
    ids = [[s.ids[i] for i in o] for s, o in zip(scored, order)]
    for name, other in zip(names[1:], ids[1:]):
        if other != ids[0]:
            raise cli.UserError(f"{names[0]} and {name} were scored on different {what} records; "
                                "an ensemble needs the members evaluated on the same splits")
    first, o = scored[0], order[0]
    mean = np.mean([s.p[k] for s, k in zip(scored, order)], axis=0)
    return predictions.Scored(first.y[o], mean, ids[0], [first.patients[i] for i in o], [first.sources[i] for i in o])


def run(evaluation_dirs: list[str | Path], out: str | Path, bootstrap: int = stats.BOOTSTRAP_RESAMPLES,
        seed: int = 0, min_f1: float = 0.0, collapse_sd: float = scoring.COLLAPSED_SD) -> dict:
    dirs = [Path(d) for d in evaluation_dirs]
    if len(dirs) < 2:
        raise cli.UserError("an ensemble needs at least two evaluated members")
    members = [artifacts.read_json(d, artifacts.METRICS) for d in dirs]
    names = [m["model_name"] for m in members]
    parsed = [catalog.parse_model_name(n) for n in names]
    if len({(m, s) for m, _, s in parsed}) != 1:
        raise cli.UserError(f"members {names} are not one cohort (one modality and strategy)")
    modality, _, strategy = parsed[0]
    missing = [str(d) for d in dirs if not (d / artifacts.VALIDATION_PREDICTIONS).exists()]
    if missing:
        raise cli.UserError(f"no {artifacts.VALIDATION_PREDICTIONS} in {', '.join(missing)}: re-run their evaluation")
    validation = _aligned([predictions.read(d / artifacts.VALIDATION_PREDICTIONS) for d in dirs], "validation", names)
    test = _aligned([predictions.read(d / artifacts.PREDICTIONS) for d in dirs], "test", names)
    record = {"name": name_of(modality, strategy), "combination": "mean of the members' calibrated probabilities",
              "members": names, "member_models_sha256": {m["model_name"]: m.get("model_sha256", "") for m in members}}
    result = scoring.report(record["name"], modality, validation, test, Path(members[0]["examples"]),
                             Path(members[0]["threshold_chosen_on"]), out, bootstrap=bootstrap, seed=seed,
                             temperature=1.0, min_f1=min_f1, collapse_sd=collapse_sd,
                             ensemble=record)
    record["threshold"] = result["threshold"]
    record["id"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    write_json(Path(out) / ENSEMBLE, record)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.ensemble", description=__doc__.split("\n\n")[0])
    ap.add_argument("evaluations", nargs="+", help="output folders of components.evaluate, one per member")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES)
    return ap


def _cli(args, _):
    r = run(args.evaluations, args.out, args.bootstrap)
    m = r["metrics"]["roc_auc"]
    print(f"{r['model_name']}: ROC-AUC {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}], "
          f"threshold {r['threshold']:.3f} (from validation)")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
