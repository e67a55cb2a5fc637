"""The demo on built-in sample data: sample_data -> extract -> split -> [stain] -> validate
for each modality, the same steps a pipeline run chains.

Training, evaluation, export and serving are later steps of the product (the model-layer,
pipeline and serving issues); until they land, the demo stops after data validation and
says so.

    python -m pipelines.demo --out DIR [--count N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from components import catalog, cli, extract, sample_data, split, stain, validate


def run_modality(modality: str, out: Path, count: int, seed: int) -> dict:
    base = out / modality
    source = sample_data.run(modality, base / "source", count=count, seed=seed)
    summary = extract.run(modality, source, base / "examples")
    manifest = split.run(base / "examples", base / "splits", seed=seed)
    splits_dir = base / "splits"
    if modality == "histopathology":
        stain.run(splits_dir, base / "splits-stain-normalized", seed=seed)
        splits_dir = base / "splits-stain-normalized"
    verdict = validate.run(splits_dir, base / "validation")
    return {"summary": summary, "manifest": manifest, "verdict": verdict, "splits_dir": splits_dir}


def run(out: str | Path, count: int = sample_data.DEFAULT_COUNT, seed: int = 0) -> None:
    out = Path(out)
    started = time.perf_counter()
    for modality in catalog.MODALITIES:
        t0 = time.perf_counter()
        print(f"== {modality}: sample data -> extract -> split -> validate", flush=True)
        r = run_modality(modality, out, count, seed)
        s = r["summary"]
        print(f"   extracted {s['records_written']} records ({s['quarantined']} quarantined), "
              f"{s['patients']} patients")
        for name, info in r["manifest"]["splits"].items():
            print(f"   {name:<10} {info['records']:>4} records  {info['patients']:>3} patients  "
                  f"positive share {info['positive_ratio']}")
        print(f"   validation {'passed' if r['verdict']['ok'] else 'FAILED'} "
              f"({len(r['verdict']['warnings'])} warnings): {out / modality / 'validation' / 'report.md'}")
        print(f"   training input ready: {r['splits_dir']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nData layer demo finished in {time.perf_counter() - started:.0f} s. Training, evaluation, "
          "export and serving of the 18 models are not part of this build yet (model-layer, "
          "pipeline and serving issues); the demo stops after data validation.")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo-output")
    ap.add_argument("--count", type=int, default=sample_data.DEFAULT_COUNT)
    ap.add_argument("--seed", type=int, default=0)
    return ap


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), lambda a, _: run(a.out, a.count, a.seed)))
