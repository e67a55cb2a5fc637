"""sample_data -> extract -> split -> validate from the command lines, per modality, and the
same commands on the real datasets in ../shared/datasets when they are present."""
import csv
import json

import pytest

from components import extract, split, validate
from components.data import records, schema
from tests.conftest import SHARED, needs_shared_datasets, run_cli


def test_data_layer_commands_run_end_to_end_on_sample_data(tmp_path):
    """Every data-layer command as a user runs it, once: histopathology's chain has them all
    (stain too). Each command is a process with TensorFlow, Beam or TFDV; the other modalities
    go through the same functions in-process (the sample_splits fixture extracts and splits them,
    test_validate and the real-data tests below validate them)."""
    modality = "histopathology"
    run_cli("components.sample_data", "--modality", modality, "--out", str(tmp_path / "src"), "--count", "48")
    out = run_cli("components.extract", "--modality", modality, "--source", str(tmp_path / "src"),
                  "--out", str(tmp_path / "ex")).stdout
    assert json.loads(out)["records_written"] == 48
    run_cli("components.split", "--examples", str(tmp_path / "ex"), "--out", str(tmp_path / "splits"))
    splits = tmp_path / "splits"
    if modality == "histopathology":
        run_cli("components.stain", "--splits", str(splits), "--out", str(tmp_path / "stained"))
        splits = tmp_path / "stained"
    out = run_cli("components.validate", "--splits", str(splits), "--out", str(tmp_path / "val")).stdout
    assert "validation passed" in out
    assert json.loads((tmp_path / "val" / "validation.json").read_text())["ok"]


REAL = {  # modality: (folder, records, patients)
    "ultrasound": ("busi", 505, 505),
    "histopathology": ("idc", 9984, 16),
    "mammography": ("ddsm", 468, 104),
}


@needs_shared_datasets()
@pytest.mark.parametrize("modality", list(REAL))
def test_real_datasets_extract_split_validate_without_crashes(modality, tmp_path, request):
    folder, n_records, n_patients = REAL[modality]
    if modality == "histopathology":           # extracted once, shared with the split test
        examples = request.getfixturevalue("real_idc_examples")
        summary = json.loads((examples / "summary.json").read_text())
    else:
        examples = tmp_path / "ex"
        summary = extract.run(modality, SHARED / folder, examples)
    assert summary["records_written"] == n_records and summary["quarantined"] == 0
    assert summary["patients"] == n_patients
    manifest = split.run(examples, tmp_path / "splits", seed=0)
    assert sum(s["records"] for s in manifest["splits"].values()) == n_records
    patients = {name: {schema.deserialize(r).patient_id for r in records.read_records(tmp_path / "splits" / name)}
                for name in split.SPLITS}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["validation"])
    assert not (patients["validation"] & patients["test"])
    verdict = validate.run(tmp_path / "splits", tmp_path / "val")
    assert verdict["ok"], verdict["fatal"]
    if modality == "ultrasound":   # BUSI's known near-duplicate frames stay together
        where = {r.source_id: name for name in split.SPLITS
                 for r in map(schema.deserialize, records.read_records(tmp_path / "splits" / name))}
        for a, b in [("normal (45)", "normal (62)"), ("benign (18)", "benign (152)"),
                     ("benign (131)", "malignant (51)"), ("malignant (4)", "malignant (5)")]:
            pa = f"busi/{a.split(' ')[0]}/{a}.png"
            pb = f"busi/{b.split(' ')[0]}/{b}.png"
            assert where[pa] == where[pb], (pa, pb)
        assert manifest["near_duplicate_pairs_merged"] > 0
    if modality == "mammography":  # both films and all crops of a woman in one split
        woman = {f"ddsm/mias_roi.tfrecords#{r['record']}": r["woman"]
                 for r in csv.DictReader((SHARED / "ddsm" / "mias_roi_index.csv").open())}
        split_of_woman = {}
        for name in split.SPLITS:
            for r in map(schema.deserialize, records.read_records(tmp_path / "splits" / name)):
                assert split_of_woman.setdefault(woman[r.source_id], name) == name


@needs_shared_datasets()
def test_the_studys_ultrasound_sources_busi_and_busbra_split_per_source(tmp_path):
    """BUS-BRA is read through its published manifest (bus_data.csv: Pathology, Case), beside
    BUSI's class folders; both sources reach every split, no case in two splits."""
    from components.data import sources

    chosen = sources.study_sources("ultrasound", SHARED)
    summary = extract.run("ultrasound", chosen, tmp_path / "ex")
    busbra = summary["sources"]["busbra"]
    assert busbra["records_written"] == 1081 and busbra["patients"] == 615 and busbra["quarantined"] == 0
    assert busbra["labels"] == {"Benign or normal": 734, "Malignant": 347}
    assert summary["sources"]["busi"]["records_written"] == 505
    manifest = split.run(tmp_path / "ex", tmp_path / "splits", seed=0)
    for name in split.SPLITS:
        assert set(manifest["splits"][name]["sources"]) == {"busi", "busbra"}
    cases = {}
    for name in split.SPLITS:
        for r in map(schema.deserialize, records.read_records(tmp_path / "splits" / name)):
            if r.source == "busbra":
                assert cases.setdefault(r.patient_id, name) == name
    assert len(cases) == 615
    assert manifest["assignment"]["busbra/negative"].startswith("hash buckets")
