"""Validate: TensorFlow Data Validation over the splits.

Writes, per split, TFDV statistics and anomalies (protos), the schema they were checked against
(the project schema written as a TFDV schema: label in {0, 1}, every feature present once per
record; or a curated one passed in), drift of validation and test against train (L-infinity on
the label and image-size distributions), a Markdown report and a Facets HTML page a person can open, and ``validation.json``
(verdict, fatal problems, warnings) for the pipeline.

It fails (exit 2) on problems that make training meaningless: an empty split, a split without
one of the two classes, labels outside {0, 1}, records without an image. Drift and other
anomalies are warnings: they are reported, not fatal.

    python -m components.validate --splits DIR2 --out DIR3 [--schema schema.pbtxt]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from components.core import artifacts, cli
from components.data import schema as example_schema
from components.core.atomic import staged_dir, write_json, write_text
from components.split import SPLITS

LABEL_DRIFT_LINF = 0.10      # max change of any class share between train and another split
SIZE_DRIFT_LINF = 0.20       # max change of the share of any image height/width
CRITICAL_FEATURES = (example_schema.LABEL, example_schema.IMAGE)


def curated_schema(modality: str):
    """The project schema (components.data.schema) as a TFDV schema, written from the contract
    rather than inferred: every feature exactly once per record, label in {0, 1}, the one
    modality. Label and image sizes are categorical so TFDV compares their distributions
    with the L-infinity distance (TFDV's histogram Jensen-Shannon gives false alarms on
    near-constant sizes such as 50x50 patches)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for name in example_schema.INT_FEATURES + example_schema.BYTES_FEATURES:
        feature = schema.feature.add(name=name)
        feature.type = schema_pb2.INT if name in example_schema.INT_FEATURES else schema_pb2.BYTES
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.value_count.min = feature.value_count.max = 1
    for feature in schema.feature:
        if feature.name == example_schema.LABEL:
            feature.int_domain.CopyFrom(schema_pb2.IntDomain(min=0, max=1, is_categorical=True))
            feature.drift_comparator.infinity_norm.threshold = LABEL_DRIFT_LINF
        elif feature.name in (example_schema.HEIGHT, example_schema.WIDTH):
            feature.int_domain.CopyFrom(schema_pb2.IntDomain(min=1, is_categorical=True))
            feature.drift_comparator.infinity_norm.threshold = SIZE_DRIFT_LINF
        elif feature.name == example_schema.MODALITY:
            feature.string_domain.CopyFrom(schema_pb2.StringDomain(name=feature.name, value=[modality]))
    return schema


def class_counts(stats) -> tuple[int, int, int]:
    """(records, negatives, positives) of one split, from its statistics (label categorical)."""
    dataset = stats.datasets[0]
    counts = {}
    for feature in dataset.features:
        if feature.path.step and feature.path.step[0] == example_schema.LABEL:
            for bucket in feature.string_stats.rank_histogram.buckets:
                counts[bucket.label] = int(bucket.sample_count)
    return int(dataset.num_examples), counts.get("0", 0), counts.get("1", 0)


def _reasons(anomalies):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    for feature, info in sorted(anomalies.anomaly_info.items()):
        for reason in info.reason:
            kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            yield feature.strip("'"), kind, (reason.description or reason.short_description).rstrip(".")


def judge(counts: dict, anomalies: dict) -> tuple[list[str], list[str]]:
    fatal, warnings = [], []
    for split in SPLITS:
        n, neg, pos = counts[split]
        if n == 0:
            fatal.append(f"{split}: the split is empty")
            continue
        if neg == 0 or pos == 0:
            missing = "positive (1)" if pos == 0 else "negative (0)"
            fatal.append(f"{split}: no {missing} examples; metrics and early stopping on it are meaningless. "
                         f"Add patients of that class or change the split seed/fractions.")
        for feature, kind, text in _reasons(anomalies[split]):
            drift = "L_INFTY" in kind or "JENSEN" in kind or "COMPARATOR" in kind
            if feature in CRITICAL_FEATURES and not drift:
                fatal.append(f"{split}: {feature}: {text}")
            else:
                warnings.append(f"{split}: {feature}: {'drift from train: ' if drift else ''}{text}")
    return fatal, warnings


def report_markdown(modality: str, counts: dict, stats: dict, fatal: list[str], warnings: list[str]) -> str:
    lines = [f"# Data validation: {modality}", "",
             f"**Verdict: {'FAILED' if fatal else 'passed'}** "
             f"({len(fatal)} fatal, {len(warnings)} warnings)", "",
             "| split | records | positives | positive share | most common heights | most common widths |",
             "|---|---|---|---|---|---|"]
    for split in SPLITS:
        n, _, pos = counts[split]
        sizes = {}
        for f in stats[split].datasets[0].features:
            if f.path.step and f.path.step[0] in (example_schema.HEIGHT, example_schema.WIDTH):
                top = f.string_stats.top_values
                sizes[f.path.step[0]] = ", ".join(f"{v.value} ({v.frequency:g})" for v in top[:3]) + \
                    (f" +{f.string_stats.unique - 3} more" if f.string_stats.unique > 3 else "")
        share = f"{pos / n:.3f}" if n else "-"
        lines.append(f"| {split} | {n} | {pos} | {share} | {sizes.get(example_schema.HEIGHT, '-')} | "
                     f"{sizes.get(example_schema.WIDTH, '-')} |")
    lines += ["", "## Fatal", *(f"- {x}" for x in fatal or ["none"]),
              "", "## Warnings", *(f"- {x}" for x in warnings or ["none"]),
              "", f"Drift thresholds (validation and test against train, L-infinity of category shares): "
                  f"label <= {LABEL_DRIFT_LINF}, image height/width <= {SIZE_DRIFT_LINF}.",
              "Protos: `<split>_stats.tfrecord`, `schema.pbtxt`, `<split>_anomalies.pbtxt`; "
              "`statistics.html` shows train vs test in Facets (its viewer script loads from the web).", ""]
    return "\n".join(lines)


def run(splits: str | Path, out: str | Path, schema_path: str | Path | None = None,
        beam_args: list[str] | None = None) -> dict:
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    splits = Path(splits)
    manifest_path = splits / artifacts.MANIFEST
    modality = json.loads(manifest_path.read_text())["modality"] if manifest_path.exists() else "unknown"
    for split in SPLITS:
        if not (splits / split).is_dir():
            raise FileNotFoundError(f"{splits / split} is missing: --splits must be the output of components.split")
    options = PipelineOptions(list(beam_args or []) or ["--runner=DirectRunner"])
    schema = tfdv.load_schema_text(str(schema_path)) if schema_path else curated_schema(modality)
    with staged_dir(out) as stage:
        tfdv.write_schema_text(schema, str(stage / "schema.pbtxt"))
        stats = {}
        for split in cli.progress(SPLITS, desc="validate: statistics", unit="split"):
            stats[split] = tfdv.generate_statistics_from_tfrecord(
                str(splits / split / "*.tfrecord*"), output_path=str(stage / f"{split}_stats.tfrecord"),
                stats_options=tfdv.StatsOptions(schema=schema), pipeline_options=options)
        anomalies = {}
        for split in SPLITS:
            previous = None if split == "train" else stats["train"]
            anomalies[split] = tfdv.validate_statistics(stats[split], schema, previous_statistics=previous)
            tfdv.write_anomalies_text(anomalies[split], str(stage / f"{split}_anomalies.pbtxt"))
        counts = {split: class_counts(stats[split]) for split in SPLITS}
        fatal, warnings = judge(counts, anomalies)
        write_text(stage / "report.md", report_markdown(modality, counts, stats, fatal, warnings))
        write_text(stage / "statistics.html", get_statistics_html(stats["train"], stats["test"], "train", "test"))
        verdict = {"modality": modality, "ok": not fatal, "fatal": fatal, "warnings": warnings,
                   "splits": {s: {"records": counts[s][0], "positives": counts[s][2]} for s in SPLITS},
                   "schema": str(schema_path) if schema_path else "project schema (components.data.schema)"}
        write_json(stage / "validation.json", verdict)
    if fatal:
        raise cli.UserError(f"data validation failed ({len(fatal)} fatal): " + "; ".join(fatal)
                            + f". Report: {Path(out) / 'report.md'}")
    return verdict


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", required=True, help="output folder of components.split")
    ap.add_argument("--out", required=True)
    ap.add_argument("--schema", help="a curated schema.pbtxt to validate against (default: the project schema)")
    ap.epilog = "Other --options go to Apache Beam (TFDV's statistics pipelines)."
    return ap


def _cli(args, beam_args):
    verdict = run(args.splits, args.out, args.schema, beam_args)
    print(f"validation passed with {len(verdict['warnings'])} warning(s); report: {Path(args.out) / 'report.md'}")
    for w in verdict["warnings"]:
        print(f"  warning: {w}")


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli, allow_extra=True))
