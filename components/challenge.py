"""Champion and challenger: is a candidate good enough to take the canary label?

Before a push labels a candidate, the model that ``stable`` serves now (the champion) is scored
on the candidate's test split, the same records, through its own serving signature (its own
preprocessing and calibration, as the model server would answer), and the two are compared
with a paired test of the AUC difference: a paired cluster bootstrap where patients hold
several records, DeLong's test where every record is its own patient. The candidate is blessed
for canary when it passes the absolute rule (its evaluation's blessing) and is non-inferior:
the lower 95 % bound of (candidate - champion) lies above ``-margin``. The first model of a
name has no champion and is judged by the absolute rule alone. (TFX's Evaluator blesses the
same way against its baseline model, with ``change_threshold``.) The comparison means something
because the split assigns patients by a keyed hash: a patient of the champion's test split is
in the candidate's test split too, not in its training data.

Writes ``blessing.json`` (blessed, reason, the baseline version, the difference, its interval
and p) and ``champion_predictions.csv``.

    python -m components.challenge --evaluation EVAL --test SPLITS/test [--champion REPO/NAME/VERSION] --out DIR [--margin 0.02]
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from components.core import artifacts, cli
from components.evaluation import paired, predictions, stats
from components.core.atomic import staged_dir, write_json, write_text

DEFAULT_MARGIN = 0.02
CHAMPION_PREDICTIONS = "champion_predictions.csv"


def score_served(saved_model: Path, test_dir: Path, batch: int = 32) -> dict[str, float]:
    """source_id -> probability that the SavedModel's serving signature gives each test record."""
    import tensorflow as tf

    from components.data import schema
    from components.data.records import read_records

    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    records = [schema.deserialize(r) for r in read_records(test_dir)]
    out = {}
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        p = serve(image_bytes=tf.constant([r.image_png for r in chunk]))["probability"].numpy()
        out.update({r.source_id: float(v) for r, v in zip(chunk, p)})
    return out


def run(evaluation_dir: str | Path, test_dir: str | Path, champion: str | Path | None, out: str | Path,
        margin: float = DEFAULT_MARGIN, bootstrap: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """``champion``: the folder of the version ``stable`` serves now (``<repository>/<name>/<version>``),
    or None for the first model of its name."""
    evaluation_dir, test_dir = Path(evaluation_dir), Path(test_dir)
    metrics = artifacts.read_json(evaluation_dir, artifacts.METRICS)
    absolute = artifacts.read_blessing(evaluation_dir)
    name = metrics["model_name"]
    if champion is not None and Path(champion).parent.name != name:
        raise cli.UserError(f"{champion} is not a version of {name}")
    stable = int(Path(champion).name) if champion is not None else None
    result = {"model_name": name, "rule": f"{absolute['rule']}, and non-inferior to the stable version: lower 95% "
              f"bound of the AUC difference above -{margin}", "margin": margin, "absolute": absolute,
              "baseline_version": stable}
    scored_by_champion = {}
    if stable is None:
        result.update(blessed=bool(absolute["blessed"]), comparison=None,
                      reason=f"the first model of its name (no stable version to compare with): the absolute "
                             f"rule alone; {absolute['reason']}")
    else:
        candidate = predictions.read(evaluation_dir / artifacts.PREDICTIONS)
        scored_by_champion = score_served(Path(champion), test_dir)
        missing = [i for i in candidate.ids if i not in scored_by_champion]
        if missing:
            raise cli.UserError(f"{len(missing)} of the candidate's test records are not in {test_dir} "
                                f"(e.g. {missing[0]}): evaluate and challenge on the same split")
        groups = predictions.groups(evaluation_dir)
        d = paired.auc_difference(candidate.y, candidate.p, np.array([scored_by_champion[i] for i in candidate.ids]), groups,
                                  bootstrap, seed)
        comparison = {"test": d["test"], "auc_candidate": d["auc_1"], "auc_champion": d["auc_2"],
                      **{k: d[k] for k in ("difference", "ci_low", "ci_high", "p_value", "p_value_is_bound")}}
        non_inferior = comparison["ci_low"] > -margin
        blessed = bool(absolute["blessed"]) and non_inferior
        verdict = "non-inferior" if non_inferior else "inferior"
        p = stats.format_p(comparison["p_value"], comparison["p_value_is_bound"])
        result.update(blessed=blessed, comparison=comparison, non_inferior=non_inferior, reason=(
            f"AUC {comparison['auc_candidate']:.3f} against the stable version {stable}'s {comparison['auc_champion']:.3f} "
            f"on the same {len(candidate.y)} test records: difference {comparison['difference']:+.3f} "
            f"[{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}], p {p}; {verdict} at margin {margin}"
            + ("" if absolute["blessed"] else f"; and the absolute rule fails: {absolute['reason']}")))
    with staged_dir(out) as stage:
        write_json(stage / artifacts.BLESSING, result)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source_id", "probability"])
        w.writerows(sorted((i, f"{v:.6f}") for i, v in scored_by_champion.items()))
        write_text(stage / CHAMPION_PREDICTIONS, buf.getvalue())
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.challenge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--evaluation", required=True, help="the candidate's evaluation (components.evaluate)")
    ap.add_argument("--test", required=True, help="the test split it was evaluated on")
    ap.add_argument("--champion", help="the stable version's folder in the model repository (REPO/NAME/VERSION); "
                                       "none: the first model of its name, judged by the absolute rule alone")
    ap.add_argument("--out", required=True)
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="non-inferiority margin on the AUC (default 0.02)")
    ap.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES)
    return ap


def _cli(args, _):
    r = run(args.evaluation, args.test, args.champion, args.out, args.margin, args.bootstrap)
    print(f"{r['model_name']}: {'blessed' if r['blessed'] else 'not blessed'} for canary: {r['reason']}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
