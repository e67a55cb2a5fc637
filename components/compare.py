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
import itertools
from pathlib import Path

import numpy as np

from components.core import cli
from components.evaluation import paired, predictions, stats
from components.core.atomic import write_json


def run(evaluation_dirs: list[str | Path], out: str | Path | None = None) -> list[dict]:
    if len(evaluation_dirs) < 2:
        raise cli.UserError("give at least two evaluation folders to compare")
    loaded = [predictions.by_id(Path(d)) for d in evaluation_dirs]
    ids = sorted(loaded[0][1])
    for name, preds in loaded[1:]:
        if sorted(preds) != ids:
            raise cli.UserError(f"{loaded[0][0]} and {name} were scored on different examples; "
                                "a paired test needs the same ones (evaluate both on the same split)")
    y = np.array([loaded[0][1][i][0] for i in ids])
    groups = predictions.groups_of(Path(evaluation_dirs[0]), ids)
    results = []
    for (name_a, a), (name_b, b) in itertools.combinations(loaded, 2):
        r = paired.auc_difference(y, np.array([a[i][1] for i in ids]), np.array([b[i][1] for i in ids]), groups)
        results.append({"model_1": name_a, "model_2": name_b, "records": len(ids), **r})
    for r, adjusted in zip(results, stats.holm([r["p_value"] for r in results])):
        r["p_holm"] = adjusted
    test = results[0]["test"]
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
