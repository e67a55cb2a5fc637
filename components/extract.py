"""Extract: one or more real sources of a modality -> sharded TFRecords of the project schema
(Apache Beam).

Every input ends as exactly one row of ``inputs.csv`` (its source, id, sha256 of its bytes,
patient, label, what happened to it): written as a record, or quarantined with a reason in
``quarantine.csv``. A bad input never crashes the run; the step fails only when the
quarantined fraction exceeds ``max_quarantine``, and then publishes nothing (what it found is
kept in ``<out>.rejected/`` for inspection). Each record keeps the name of its source
(``components.data.sources``); ``summary.json`` counts every source apart and all together.

    python -m components.extract --modality M --source PATH --out DIR [--runner DirectRunner ...]
    python -m components.extract --modality M --source DIR --manifest CSV --image-column C \
        --label-column C --label-map malignant=1,benign=0 [--patient-column C --path-template T] --out DIR
    python -m components.extract --modality M --sources SOURCES.json --out DIR
    python -m components.extract --modality mammography --source DIR --format dicom --manifest CSV \
        (--image-column C | --uid-column C [--uid-attribute SeriesInstanceUID]) --label-column C \
        --label-map malignant=1,benign=0 [--patient-column C --abnormality-column C] --phi-key-file KEY --out DIR
    python -m components.extract --modality mammography --source CBIS-DDSM/ --manifest-preset cbis-ddsm \
        --phi-key-file KEY --out DIR

A DICOM source's patients, files and UIDs reach no artifact in clear: its ids are keyed hashes
(``components.core.phi``) under the key the run is given, and ``summary.json`` names the key by its id.
"""
from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime
import io
import json
from pathlib import Path

from components.core import catalog, cli, phi
from components.imaging import images
from components.data import readers, schema, sources as sources_
from components.core.atomic import staged_dir, write_json, write_text
from components.data.records import tfrecord_files
from components.core.digests import sha256_bytes, sha256_file

INPUTS_HEADER = ["source", "source_id", "source_sha256", "patient_id", "label", "status", "record_sha256"]
WRITTEN = "written"
NO_BYTES = sha256_bytes(b"")


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

            def process(self, tagged: tuple[str, readers.RawItem]):
                self.bar.update(1)
                source, raw = tagged
                # ids carry their source, so two sources may reuse image or patient names
                item = dataclasses.replace(raw, source_id=f"{source}/{raw.source_id}",
                                           patient_id=f"{source}/{raw.patient_id}")
                source_sha = sha256_bytes(item.data)
                try:
                    if item.problem:
                        raise images.ImageRejected(item.problem)
                    decoded = item.decoded or (images.from_raw_gray(item.data, *item.raw_shape) if item.raw_shape
                                               else images.decode(item.data, outer.max_pixels))
                except Exception as e:      # any error reading one item quarantines that item only
                    reason = str(e) if isinstance(e, images.ImageRejected) else f"unreadable ({type(e).__name__}: {e})"
                    yield beam.pvalue.TaggedOutput("quarantine", _csv_line([source, item.source_id, reason]))
                    yield beam.pvalue.TaggedOutput("inputs", _csv_line(
                        [source, item.source_id, source_sha, item.patient_id, "" if item.label is None else item.label,
                         f"quarantined: {reason}", ""]))
                    return
                record = schema.serialize(schema.Record(
                    decoded.png(), decoded.height, decoded.width, int(item.label), item.patient_id,
                    item.source_id, outer.modality, source))
                yield beam.pvalue.TaggedOutput("inputs", _csv_line(
                    [source, item.source_id, source_sha, item.patient_id, item.label, WRITTEN, sha256_bytes(record)]))
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


def run(modality: str, source, out: str | Path, max_quarantine: float = 0.01, num_shards: int = 0,
        max_pixels: int = images.DEFAULT_MAX_PIXELS, beam_args: list[str] | None = None,
        phi_key: bytes | None = None) -> dict:
    """Extract ``source``: a path (one source in the modality's default format, named after its
    folder), a :class:`components.data.sources.Source`, or a list of them. ``phi_key`` pseudonymizes
    DICOM sources (default: the environment's, ``components.core.phi.load_key``)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    spec = catalog.modality(modality)
    chosen = sources_.parse(source) if not isinstance(source, (str, Path)) or str(source).endswith(".json") \
        else [sources_.single(Path(source).resolve())]
    pseudonymized = [s.name for s in chosen if s.needs_phi_key]
    if pseudonymized and not phi_key:
        phi_key = phi.load_key()
    readers_ = {s.name: s.reader(modality, phi_key, max_pixels) for s in chosen}
    units = [(name, unit) for name, reader in readers_.items() for unit in reader.units()]
    empty = [name for name in readers_ if not any(n == name for n, _ in units)]
    if empty:
        raise cli.UserError(f"no input files in source(s) {', '.join(empty)} ({', '.join(s.path for s in chosen if s.name in empty)})")
    started = datetime.datetime.now(datetime.timezone.utc)
    total = len(units) if all(r.name != "ddsm" for r in readers_.values()) else None

    def read(tagged):
        name, unit = tagged
        return ((name, item) for item in readers_[name].items(unit))

    with staged_dir(out, keep_failed_as=".rejected") as stage:
        pipeline_options = PipelineOptions(list(beam_args or []) or ["--runner=DirectRunner"])
        with beam.Pipeline(options=pipeline_options) as p:
            items = (p | "ListUnits" >> beam.Create(units)
                       | "SpreadUnits" >> beam.Reshuffle()
                       | "ReadItems" >> beam.FlatMap(read))
            results = items | "Convert" >> beam.ParDo(
                ConvertItem(modality, max_pixels, total).make_dofn()).with_outputs("inputs", "quarantine", main="examples")
            results.examples | "WriteExamples" >> beam.io.WriteToTFRecord(
                str(stage / "examples"), file_name_suffix=".tfrecord.gz", num_shards=num_shards)
            for tag in ("inputs", "quarantine"):
                results[tag] | f"Write_{tag}" >> beam.io.WriteToText(
                    str(stage / tag), file_name_suffix=".csv", shard_name_template="")

        inputs_csv = _sorted_csv(stage / "inputs", INPUTS_HEADER)
        _sorted_csv(stage / "quarantine", ["source", "source_id", "reason"])
        summary = summarize(inputs_csv, spec, chosen, readers_, started)
        if pseudonymized:
            summary["pseudonyms"] = {"sources": pseudonymized, "method": f"HMAC-SHA256, {phi.DIGITS} hex digits",
                                     "key_id": phi.key_id(phi_key)}
        summary["shards"] = [p.name for p in tfrecord_files(stage)]
        write_json(stage / "summary.json", summary)
        rejected = Path(str(out) + ".rejected") / "quarantine.csv"
        if summary["records_written"] == 0:
            raise cli.UserError(f"no image of {', '.join(s.path for s in chosen)} could be read; see {rejected}")
        unread = [name for name, counts in summary["sources"].items() if counts["records_written"] == 0]
        if unread:
            raise cli.UserError(f"no image of source(s) {', '.join(unread)} could be read; see {rejected}")
        if summary["quarantine_fraction"] > max_quarantine:
            raise cli.UserError(
                f"{summary['quarantined']} of {summary['inputs']} inputs ({summary['quarantine_fraction']:.1%}) were "
                f"quarantined, above the {max_quarantine:.1%} limit; nothing was published. Read "
                f"{rejected}, fix or remove those inputs, or raise --max-quarantine.")
    return summary


def _counts(rows: list[dict], spec: catalog.Modality) -> dict:
    written = [r for r in rows if r["status"] == WRITTEN]
    quarantined = [r for r in rows if r["status"] != WRITTEN]
    return {
        "inputs": len(rows),
        "records_written": len(written),
        "labels": {spec.label_names[k]: sum(1 for r in written if int(r["label"]) == k) for k in (0, 1)},
        "patients": len({r["patient_id"] for r in written}),
        "quarantined": len(quarantined),
        "quarantine_fraction": round(len(quarantined) / len(rows), 6) if rows else 0.0,
        "quarantine_reasons": dict(collections.Counter(r["status"].removeprefix("quarantined: ") for r in quarantined)),
    }


def summarize(inputs_csv: Path, spec: catalog.Modality, chosen: list, readers_: dict, started) -> dict:
    rows = list(csv.DictReader(inputs_csv.open(newline="")))
    by_content = collections.defaultdict(list)
    for r in rows:
        if r["source_sha256"] != NO_BYTES:      # rows refused unread are no copies of one another
            by_content[r["source_sha256"]].append(r)
    duplicates = [g for g in by_content.values() if len(g) > 1]
    label_conflicts = [[r["source_id"] for r in g] for g in duplicates if len({r["label"] for r in g}) > 1]
    skipped = [f"{name}/{s}" for name, reader in readers_.items() for s in reader.skipped()]
    per_source = {}
    for s in chosen:
        reader = readers_[s.name]
        per_source[s.name] = {"path": s.path, "format": reader.name, "patient_ids_from": reader.patient_source(),
                              **_counts([r for r in rows if r["source"] == s.name], spec)}
    return {
        "modality": spec.name,
        "source": ", ".join(s.path for s in chosen),
        "source_format": ", ".join(sorted({r.name for r in readers_.values()})),
        "started_utc": started.isoformat(timespec="seconds"),
        **_counts(rows, spec),
        "inputs_sha256": sha256_file(inputs_csv),
        "sources": per_source,
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
            raise ValueError(f"--label-map entry {pair!r} is not name=0 or name=1 (e.g. malignant=1,benign=0)")
        result[name.strip()] = int(value)
    return result


def source_from_args(args) -> list:
    """The sources the command line names: ``--sources FILE.json``, or one ``--source`` with its
    format options."""
    if args.sources:
        if args.source:
            raise cli.UserError("give --source or --sources, not both")
        return sources_.parse(Path(args.sources))
    if not args.source:
        raise cli.UserError("give --source PATH (or --sources FILE.json for several)")
    default_label = None if args.default_label.lower() == "none" else int(args.default_label)
    preset = sources_.preset(args.manifest_preset) if args.manifest_preset else {}
    fmt = args.source_format or preset.get("format") or ("manifest" if args.manifest else "")
    options = {"format": fmt, "label_map": parse_label_map(args.label_map) or preset.get("label_map"),
               "default_label": default_label}
    if fmt in ("manifest", "dicom"):
        options.update(_manifest_options(args, fmt, preset))
    return [sources_.single(Path(args.source).resolve(), args.source_name, **options)]


def _manifest_options(args, fmt: str, preset: dict) -> dict:
    """A manifest's options: the preset's, overridden by those given on the command line."""
    manifests = tuple(args.manifest or preset.get("manifest") or ())
    given = {"image_column": args.image_column, "label_column": args.label_column,
             "patient_column": args.patient_column, "path_template": args.path_template}
    if fmt == "dicom":
        given.update(uid_column=args.uid_column, uid_attribute=args.uid_attribute,
                     abnormality_column=args.abnormality_column)
    options = {**{k: v for k, v in preset.items() if k in given}, **{k: v for k, v in given.items() if v is not None}}
    # a dicom source takes a tuple of CSVs; a plain manifest one CSV, as before
    options["manifest"] = manifests if fmt == "dicom" or len(manifests) > 1 else "".join(manifests)
    return options


def add_source_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that name a source and its format (``source_from_args`` reads them back): the
    extract step and site acceptance read a hospital's images alike."""
    ap.add_argument("--source", help="dataset root (DDSM .tfrecords file/folder, class folders, IDC tree, "
                                     "or the folder a --manifest's paths are relative to)")
    ap.add_argument("--sources", help="a JSON file listing several sources (components.data.sources)")
    ap.add_argument("--source-name", help="the source's name in every record (default: its folder's name)")
    ap.add_argument("--format", dest="source_format", choices=list(readers.FORMATS),
                    help="source format (default: the modality's, see components.core.catalog; manifest with --manifest)")
    ap.add_argument("--label-map", help="class folders: folder=label pairs, e.g. malignant=1,benign=0,normal=0; "
                                        "manifest: value=label pairs of the label column")
    ap.add_argument("--default-label", default="0", help="class folders only: label of folders not in the map, or 'none' to quarantine them")
    ap.add_argument("--manifest", action="append", help="a CSV listing the images (path or ID, label, patient), "
                                                         "relative to --source (dicom: repeat it for several)")
    ap.add_argument("--manifest-preset", choices=list(sources_.PRESETS),
                    help="the options of a dataset as published (cbis-ddsm: the four case-description CSVs); "
                         "options given beside it win")
    ap.add_argument("--image-column", help="manifest: the column holding the image's path or ID")
    ap.add_argument("--path-template", help="manifest: the path of an image from its ID, e.g. 'Images/{}.png'")
    ap.add_argument("--label-column", help="manifest: the column holding the label (mapped by --label-map)")
    ap.add_argument("--patient-column", help="manifest: the column naming the patient (default: every image its "
                                             "own; dicom: the file's PatientID)")
    ap.add_argument("--uid-column", help="dicom: the column naming the file by a UID (the cell, or its last path "
                                         "part that is a UID) instead of --image-column")
    ap.add_argument("--uid-attribute", choices=list(sources_.UID_ATTRIBUTES),
                    help="dicom: the UID --uid-column holds (default SOPInstanceUID)")
    ap.add_argument("--abnormality-column", help="dicom: rows of one file that differ in this column are its "
                                                 "abnormalities: one record, positive when any of them is")
    ap.add_argument("--phi-key-file", help=f"dicom: the secret key of the patient/file pseudonyms (at least "
                                           f"{phi.MIN_KEY_BYTES} bytes; default ${phi.KEY_FILE_ENV} or ${phi.KEY_ENV})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", required=True, choices=list(catalog.MODALITIES))
    add_source_arguments(ap)
    ap.add_argument("--out", required=True, help="output folder (replaced atomically)")
    ap.add_argument("--max-quarantine", type=float, default=0.01, help="fail when more than this fraction is quarantined (default 0.01)")
    ap.add_argument("--num-shards", type=int, default=0, help="TFRecord shards (0: the runner decides)")
    ap.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS)
    ap.epilog = "Other --options (e.g. --runner, --direct_num_workers, --project) go to Apache Beam."
    return ap


def _cli(args, beam_args):
    summary = run(args.modality, source_from_args(args), args.out, args.max_quarantine, args.num_shards,
                  args.max_pixels, beam_args, phi.load_key(args.phi_key_file) if args.phi_key_file else None)
    print(json.dumps({k: summary[k] for k in ("records_written", "labels", "patients", "quarantined",
                                              "quarantine_reasons")}, indent=None))


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli, allow_extra=True))
