"""Extract: a real source dataset -> sharded TFRecords of the project schema (Apache Beam).

Every input ends as exactly one row of ``inputs.csv`` (source, sha256 of its bytes, patient,
label, what happened to it): written as a record, or quarantined with a reason in
``quarantine.csv``. A bad input never crashes the run; the step fails only when the
quarantined fraction exceeds ``max_quarantine``, and then publishes nothing (what it found is
kept in ``<out>.rejected/`` for inspection).

    python -m components.extract --modality M --source PATH --out DIR [--runner DirectRunner ...]
"""
from __future__ import annotations

import argparse
import collections
import csv
import datetime
import io
import json
from pathlib import Path

from components import catalog, cli, images, readers, schema
from components.atomic import staged_dir, write_json, write_text
from components.records import sha256_bytes, sha256_file, tfrecord_files

INPUTS_HEADER = ["source_id", "source_sha256", "patient_id", "label", "status", "record_sha256"]
WRITTEN = "written"


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


class ConvertItem:
    """Beam DoFn body: RawItem -> serialized tf.Example (main) + inputs/quarantine rows."""

    def __init__(self, modality: str, max_pixels: int, total: int | None):
        self.modality, self.max_pixels, self.total = modality, max_pixels, total

    def make_dofn(self):
        import apache_beam as beam

        outer = self

        class _Convert(beam.DoFn):
            def setup(self):
                self.bar = cli.progress(total=outer.total, desc=f"extract {outer.modality}", unit="img")

            def process(self, item: readers.RawItem):
                self.bar.update(1)
                source_sha = sha256_bytes(item.data)
                try:
                    if item.problem:
                        raise images.ImageRejected(item.problem)
                    decoded = (images.from_raw_gray(item.data, *item.raw_shape) if item.raw_shape
                               else images.decode(item.data, outer.max_pixels))
                except Exception as e:      # any error reading one item quarantines that item only
                    reason = str(e) if isinstance(e, images.ImageRejected) else f"unreadable ({type(e).__name__}: {e})"
                    yield beam.pvalue.TaggedOutput("quarantine", _csv_line([item.source_id, reason]))
                    yield beam.pvalue.TaggedOutput("inputs", _csv_line(
                        [item.source_id, source_sha, item.patient_id, "" if item.label is None else item.label,
                         f"quarantined: {reason}", ""]))
                    return
                record = schema.serialize(schema.Record(
                    decoded.png(), decoded.height, decoded.width, int(item.label), item.patient_id,
                    item.source_id, outer.modality))
                yield beam.pvalue.TaggedOutput("inputs", _csv_line(
                    [item.source_id, source_sha, item.patient_id, item.label, WRITTEN, sha256_bytes(record)]))
                yield record

            def teardown(self):
                self.bar.close()

        return _Convert()


def _sorted_csv(path_without_suffix: Path, header: list[str]) -> Path:
    """Beam wrote ``<name>.csv`` unordered; rewrite it sorted so it diffs and hashes stably."""
    path = path_without_suffix.with_suffix(".csv")
    rows = sorted(csv.reader(path.open(newline=""))) if path.exists() else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())
    return path


def run(modality: str, source: str | Path, out: str | Path, source_format: str | None = None,
        label_map: dict[str, int] | None = None, default_label: int | None = 0,
        max_quarantine: float = 0.01, num_shards: int = 0, max_pixels: int = images.DEFAULT_MAX_PIXELS,
        beam_args: list[str] | None = None) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    spec = catalog.modality(modality)
    source_format = source_format or spec.source_format
    options = {}
    if source_format == "class_folders":   # the only format whose labels come from a map
        options = {"default_label": default_label, **({"label_map": label_map} if label_map else {})}
    reader = readers.make_reader(source_format, Path(source).resolve(), **options)
    units = reader.units()
    if not units:
        raise cli.UserError(f"no input files under {source}")
    started = datetime.datetime.now(datetime.timezone.utc)
    total = len(units) if source_format != "ddsm" else None

    with staged_dir(out, keep_failed_as=".rejected") as stage:
        pipeline_options = PipelineOptions(list(beam_args or []) or ["--runner=DirectRunner"])
        with beam.Pipeline(options=pipeline_options) as p:
            items = (p | "ListUnits" >> beam.Create(units)
                       | "SpreadUnits" >> beam.Reshuffle()
                       | "ReadItems" >> beam.FlatMap(reader.items))
            results = items | "Convert" >> beam.ParDo(
                ConvertItem(modality, max_pixels, total).make_dofn()).with_outputs("inputs", "quarantine", main="examples")
            results.examples | "WriteExamples" >> beam.io.WriteToTFRecord(
                str(stage / "examples"), file_name_suffix=".tfrecord.gz", num_shards=num_shards)
            for tag in ("inputs", "quarantine"):
                results[tag] | f"Write_{tag}" >> beam.io.WriteToText(
                    str(stage / tag), file_name_suffix=".csv", shard_name_template="")

        inputs_csv = _sorted_csv(stage / "inputs", INPUTS_HEADER)
        _sorted_csv(stage / "quarantine", ["source_id", "reason"])
        summary = summarize(inputs_csv, spec, reader, source, started)
        summary["shards"] = [p.name for p in tfrecord_files(stage)]
        write_json(stage / "summary.json", summary)
        if summary["records_written"] == 0:
            raise cli.UserError(f"no image of {source} could be read; see {Path(str(out) + '.rejected') / 'quarantine.csv'}")
        if summary["quarantine_fraction"] > max_quarantine:
            raise cli.UserError(
                f"{summary['quarantined']} of {summary['inputs']} inputs ({summary['quarantine_fraction']:.1%}) were "
                f"quarantined, above the {max_quarantine:.1%} limit; nothing was published. Read "
                f"{Path(str(out) + '.rejected') / 'quarantine.csv'}, fix or remove those inputs, or raise --max-quarantine.")
    return summary


def summarize(inputs_csv: Path, spec: catalog.Modality, reader, source, started) -> dict:
    rows = list(csv.DictReader(inputs_csv.open(newline="")))
    written = [r for r in rows if r["status"] == WRITTEN]
    quarantined = [r for r in rows if r["status"] != WRITTEN]
    by_content = collections.defaultdict(list)
    for r in rows:
        by_content[r["source_sha256"]].append(r)
    duplicates = [g for g in by_content.values() if len(g) > 1]
    label_conflicts = [[r["source_id"] for r in g] for g in duplicates if len({r["label"] for r in g}) > 1]
    skipped = reader.skipped()
    patient_source = reader.patient_index(Path(reader.units()[0]))[1] if isinstance(reader, readers.DdsmReader) else None
    return {
        "modality": spec.name,
        "source": str(source),
        "source_format": reader.name,
        "patient_ids_from": patient_source or ("folder names" if reader.name == "idc_tree" else "image id (source has no patients)"),
        "started_utc": started.isoformat(timespec="seconds"),
        "inputs": len(rows),
        "inputs_sha256": sha256_file(inputs_csv),
        "records_written": len(written),
        "labels": {spec.label_names[k]: sum(1 for r in written if int(r["label"]) == k) for k in (0, 1)},
        "patients": len({r["patient_id"] for r in written}),
        "quarantined": len(quarantined),
        "quarantine_fraction": round(len(quarantined) / len(rows), 6) if rows else 0.0,
        "quarantine_reasons": dict(collections.Counter(r["status"].removeprefix("quarantined: ") for r in quarantined)),
        "skipped_by_exclude": len(skipped),
        "skipped_examples": skipped[:10],
        "exact_duplicate_groups": len(duplicates),
        "duplicate_label_conflicts": label_conflicts[:20],
    }


def parse_label_map(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    result = {}
    for pair in text.split(","):
        name, sep, value = pair.partition("=")
        if not sep or value.strip() not in ("0", "1"):
            raise ValueError(f"--label-map entry {pair!r} is not folder=0 or folder=1 (e.g. malignant=1,benign=0)")
        result[name.strip()] = int(value)
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    ap.add_argument("--source", required=True, help="dataset root (DDSM .tfrecords file/folder, class folders, IDC tree)")
    ap.add_argument("--out", required=True, help="output folder (replaced atomically)")
    ap.add_argument("--format", dest="source_format", choices=list(readers.FORMATS),
                    help="source format (default: the modality's, see components.catalog)")
    ap.add_argument("--label-map", help="class folders only: folder=label pairs, e.g. malignant=1,benign=0,normal=0")
    ap.add_argument("--default-label", default="0", help="class folders only: label of folders not in the map, or 'none' to quarantine them")
    ap.add_argument("--max-quarantine", type=float, default=0.01, help="fail when more than this fraction is quarantined (default 0.01)")
    ap.add_argument("--num-shards", type=int, default=0, help="TFRecord shards (0: the runner decides)")
    ap.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    ap.epilog = "Other --options (e.g. --runner, --direct_num_workers, --project) go to Apache Beam."
    return ap


def _cli(args, beam_args):
    default_label = None if args.default_label.lower() == "none" else int(args.default_label)
    summary = run(args.modality, args.source, args.out, args.source_format, parse_label_map(args.label_map),
                  default_label, args.max_quarantine, args.num_shards, args.max_pixels, beam_args)
    print(json.dumps({k: summary[k] for k in ("records_written", "labels", "patients", "quarantined",
                                              "quarantine_reasons")}, indent=None))


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli, allow_extra=True))
