"""Paired comparison of models scored on the same examples: the AUC difference of every pair.

Reads the ``predictions.csv`` of two or more ``components.evaluate`` outputs, joins them on
``source_id`` (it refuses models scored on different examples) and tests every pair. Where every
record is its own patient (independent records) that is DeLong's test; where patients (or
near-duplicate groups) hold several records it is a paired cluster bootstrap of the difference,
since DeLong's variance assumes independence. With more than one pair the p-values are also
Holm-corrected.

    python -m components.compare EVAL_DIR EVAL_DIR [...] [--out comparison.json]
"""
from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np

from components import artifacts, cli, stats
from components.atomic import write_json


def load_predictions(evaluation_dir: Path) -> tuple[str, dict[str, tuple[int, float]]]:
    name = artifacts.read_json(evaluation_dir, artifacts.METRICS)["model_name"]
    with (evaluation_dir / artifacts.PREDICTIONS).open(newline="") as f:
        return name, {r["source_id"]: (int(r["label"]), float(r["probability"])) for r in csv.DictReader(f)}


def groups_of(evaluation_dir: Path, ids: list[str]) -> list[str]:
    """The cluster (patient or near-duplicate group) of each record, in the order of ``ids``."""
    with (evaluation_dir / artifacts.PREDICTIONS).open(newline="") as f:
        group = {r["source_id"]: r.get("group") or r["patient_id"] for r in csv.DictReader(f)}
    return [group[i] for i in ids]


def run(evaluation_dirs: list[str | Path], out: str | Path | None = None) -> list[dict]:
    if len(evaluation_dirs) < 2:
        raise cli.UserError("give at least two evaluation folders to compare")
    loaded = [load_predictions(Path(d)) for d in evaluation_dirs]
    ids = sorted(loaded[0][1])
    for name, preds in loaded[1:]:
        if sorted(preds) != ids:
            raise cli.UserError(f"{loaded[0][0]} and {name} were scored on different examples; "
                                "a paired test needs the same ones (evaluate both on the same split)")
    y = np.array([loaded[0][1][i][0] for i in ids])
    groups = groups_of(Path(evaluation_dirs[0]), ids)
    independent = len(set(groups)) == len(ids)
    results = []
    if independent:
        for (name_a, a), (name_b, b) in itertools.combinations(loaded, 2):
            test = stats.delong(y, np.array([a[i][1] for i in ids]), np.array([b[i][1] for i in ids]))
            results.append({"model_1": name_a, "model_2": name_b, "records": len(ids), **test})
    else:
        scores = {name: np.array([preds[i][1] for i in ids]) for name, preds in loaded}
        results = [{**r, "records": len(ids)} for r in stats.paired_auc_bootstrap(y, scores, groups)]
    for r, adjusted in zip(results, stats.holm([r["p_value"] for r in results])):
        r["p_holm"] = adjusted
    test = ("DeLong (paired ROC AUC; records independent)" if independent else
            f"paired cluster bootstrap of the AUC difference ({len(set(groups))} patients/groups)")
    if out:
        write_json(out, {"test": test, "correction": "Holm", "comparisons": results})
    return results


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("evaluations", nargs="+", help="output folders of components.evaluate")
    ap.add_argument("--out", help="write the comparisons as JSON here")
    return ap


def _cli(args, _):
    for r in run(args.evaluations, args.out):
        spread = f"SE {r['se']:.3f}" if "se" in r else f"95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f}"
        print(f"{r['model_1']} vs {r['model_2']}: AUC {r['auc_1']:.3f} vs {r['auc_2']:.3f}, "
              f"difference {r['difference']:+.3f} ({spread}), p = {r['p_value']:.3g}, Holm {r['p_holm']:.3g}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
