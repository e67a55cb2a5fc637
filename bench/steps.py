"""``python -m bench.steps``: a model's time after training in a pipeline run, as the steps ran
until now against as they run now, side by side on the same trained models.

- before: evaluate and export were two steps, so two processes that each start TensorFlow and
  load the model (``python -m components.evaluate``, then ``python -m components.export``);
- now: the evaluate step's process also saves the serving graph of the model it has just
  scored (``pipelines.steps.evaluate_and_save_graph``), and the export step copies that graph
  and writes the card without TensorFlow (``python -m components.export --graph``).

Each step is one process here, as under the local runner or on a cluster. Both paths must give
the same test metrics. By default the models are those of the newest pipeline run in
``study-output/work`` (``make study``); ``--models`` takes train steps' output folders.

    python -m bench.steps [--work-dir study-output/work] [--models DIR ...] [--bootstrap 2000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.evaluation import stats


def _timed(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def newest_run_models(work_dir: Path) -> list[Path]:
    runs = sorted((p.parent for p in work_dir.glob("*/manifest.json") if "-cv-" not in p.parent.name),
                  key=lambda p: p.stat().st_mtime)
    for run in reversed(runs):
        found = sorted(run.glob("*/train*/model"))
        if found:
            return found
    return []


def measure(model: Path, out: Path, bootstrap: int) -> dict:
    training = json.loads((model / "training.json").read_text())
    splits = Path(training["splits"])
    rules = ["--min-f1", "0", "--bootstrap", str(bootstrap), "--seed", "1"]
    before = {
        "evaluate": _timed(["-m", "components.evaluate", "--model", str(model), "--examples", str(splits / "test"),
                            "--threshold-from", str(splits / "validation"), "--out", str(out / "before-eval"), *rules]),
        "export": _timed(["-m", "components.export", "--model", str(model), "--evaluation", str(out / "before-eval"),
                          "--out", str(out / "before-export")])}
    code = ("from pipelines import steps; steps.evaluate_and_save_graph("
            f"{str(model)!r}, {str(splits)!r}, {str(out / 'now-eval')!r}, {str(out / 'now-graph')!r}, "
            f"min_f1=0.0, collapse_sd=0.0, bootstrap={bootstrap}, seed=1)")
    now = {"evaluate + graph": _timed(["-c", code]),
           "export (card)": _timed(["-m", "components.export", "--graph", str(out / "now-graph"), "--model", str(model),
                                    "--evaluation", str(out / "now-eval"), "--out", str(out / "now-export")])}
    metrics = [json.loads((out / f / "metrics.json").read_text())["metrics"] for f in ("before-eval", "now-eval")]
    if metrics[0] != metrics[1]:
        raise SystemExit(f"{training['model_name']}: the two paths gave different test metrics")
    return {"model": training["model_name"], "image_size": training["config"]["image_size"],
            "before": before, "now": now}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="study-output/work", help="a study's work folder (newest run used)")
    ap.add_argument("--models", nargs="*", help="train steps' output folders instead")
    ap.add_argument("--bootstrap", type=int, default=stats.BOOTSTRAP_RESAMPLES)
    args = ap.parse_args(argv)
    models = [Path(m) for m in args.models] if args.models else newest_run_models(Path(args.work_dir))
    if not models:
        print(f"bench.steps: skipped, no trained models under {args.work_dir} (run `make study` first, or pass --models)")
        return 0
    print(f"{len(models)} trained models; each step a process, {args.bootstrap} bootstrap resamples")
    print(f"{'model':40s} {'px':>4s} {'before: evaluate + export':>26s} {'now: evaluate+graph + card':>27s} {'saved':>7s}")
    totals = [0.0, 0.0]
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(model, Path(tmp), args.bootstrap)
        b, n = sum(r["before"].values()), sum(r["now"].values())
        totals[0] += b
        totals[1] += n
        print(f"{r['model']:40s} {r['image_size']:4d} {r['before']['evaluate']:9.1f} + {r['before']['export']:5.1f} = "
              f"{b:5.1f} s {r['now']['evaluate + graph']:9.1f} + {r['now']['export (card)']:4.1f} = {n:5.1f} s "
              f"{b - n:6.1f} s")
    k = len(models)
    print(f"mean per model: before {totals[0] / k:.1f} s, now {totals[1] / k:.1f} s "
          f"({totals[1] / totals[0]:.2f}x the time; the same test metrics on both paths)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
