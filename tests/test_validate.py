"""TFDV validation: reports on healthy splits, fails on splits that make training meaningless."""
import json
import shutil

import pytest

from components.core import cli
from components.data import records, schema
from components import validate


def test_sample_splits_validate_with_reports(sample_splits, tmp_path):
    verdict = validate.run(sample_splits["mammography"], tmp_path / "v")
    assert verdict["ok"] and verdict["fatal"] == []
    out = tmp_path / "v"
    for name in ("schema.pbtxt", "report.md", "statistics.html", "validation.json",
                 "train_stats.tfrecord", "test_anomalies.pbtxt"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "**Verdict: passed**" in report and "| train |" in report
    assert sum(s["records"] for s in verdict["splits"].values()) == 60


def test_a_split_without_positives_fails_with_a_clear_message(sample_splits, tmp_path):
    broken = tmp_path / "splits"
    shutil.copytree(sample_splits["ultrasound"], broken)
    negatives = [r for r in records.read_records(broken / "test") if schema.deserialize(r).label == 0]
    for f in records.tfrecord_files(broken / "test"):
        f.unlink()
    records.write_shards(negatives, broken / "test", "part", 1)
    with pytest.raises(cli.UserError, match="test: no positive \\(1\\) examples"):
        validate.run(broken, tmp_path / "v")
    verdict = json.loads((tmp_path / "v" / "validation.json").read_text())   # report still published
    assert not verdict["ok"] and "FAILED" in (tmp_path / "v" / "report.md").read_text()


def test_labels_outside_0_1_are_fatal(sample_splits, tmp_path):
    broken = tmp_path / "splits"
    shutil.copytree(sample_splits["ultrasound"], broken)
    recs = [schema.deserialize(r) for r in records.read_records(broken / "train")]
    bad = [schema.Record(r.image_png, r.height, r.width, 2 if i == 0 else r.label, r.patient_id,
                         r.source_id, r.modality) for i, r in enumerate(recs)]
    for f in records.tfrecord_files(broken / "train"):
        f.unlink()
    records.write_shards((schema.serialize(r) for r in bad), broken / "train", "part", 1)
    with pytest.raises(cli.UserError, match="train: label: Unexpectedly large value: 2"):
        validate.run(broken, tmp_path / "v")
