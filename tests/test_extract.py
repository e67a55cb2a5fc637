"""Extract on sample data and on the bad inputs a real class folder can hold."""
import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from components.core import catalog
from components import extract, sample_data
from components.data import records, schema
from tests.conftest import run_cli


def _png(arr, **kw) -> bytes:
    buf = io.BytesIO()
    (arr if isinstance(arr, Image.Image) else Image.fromarray(arr)).save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture()
def messy_folder(tmp_path):
    """A BUSI-style class folder with good images and five awkward files."""
    root = tmp_path / "busi"
    sample_data.run("ultrasound", root, count=40, seed=3)
    rgb = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    good_png = _png(rgb)
    (root / "benign" / "zero-bytes.png").write_bytes(b"")
    (root / "benign" / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "malignant" / "notes.png").write_text("radiologist notes, not an image\n")
    deep = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 13)
    (root / "malignant" / "sixteen-bit.png").write_bytes(_png(Image.fromarray(deep)))
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    (root / "normal" / "cmyk.jpg").write_bytes(cmyk.getvalue())
    (root / "benign" / "benign (1)_mask.png").write_bytes(_png(np.zeros((64, 64), np.uint8)))
    return root, rgb, deep


def _rows(path):
    return {r["source_id"]: r for r in csv.DictReader(path.open())}


def test_awkward_files_are_read_correctly_or_quarantined_with_a_reason(messy_folder, tmp_path):
    root, rgb, deep = messy_folder
    summary = extract.run("ultrasound", root, tmp_path / "out", max_quarantine=0.5)
    inputs = _rows(tmp_path / "out" / "inputs.csv")
    quarantine = {r["source_id"]: r["reason"] for r in csv.DictReader((tmp_path / "out" / "quarantine.csv").open())}
    assert quarantine == {
        "busi/benign/zero-bytes.png": "empty file (0 bytes)",
        "busi/benign/truncated.png": "corrupt or truncated PNG: image file is truncated",
        "busi/malignant/notes.png": "not an image: the content is no known image format",
    }
    assert summary["quarantined"] == 3 and summary["skipped_by_exclude"] == 1   # the lesion mask
    written = {schema.deserialize(r).source_id: schema.deserialize(r) for r in records.read_records(tmp_path / "out")}
    assert len(written) == 40 + 2 == summary["records_written"]
    # 16-bit grayscale: read, stretched to the full 8-bit range, label from its folder
    sixteen = written["busi/malignant/sixteen-bit.png"]
    pixels = np.asarray(Image.open(io.BytesIO(sixteen.image_png)))
    assert pixels.dtype == np.uint8 and pixels.shape == deep.shape
    assert pixels.min() == 0 and pixels.max() == 255 and sixteen.label == 1
    assert np.corrcoef(pixels.ravel(), deep.ravel())[0, 1] > 0.999
    # CMYK JPEG: converted to RGB, close to the colours it was made from
    cmyk = written["busi/normal/cmyk.jpg"]
    back = np.asarray(Image.open(io.BytesIO(cmyk.image_png)))
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb).mean() < 12 and cmyk.label == 0
    assert inputs["busi/benign/zero-bytes.png"]["status"] == "quarantined: empty file (0 bytes)"
    assert {r.source for r in written.values()} == {"busi"} and inputs["busi/benign/zero-bytes.png"]["source"] == "busi"


def test_too_many_quarantined_fails_clearly_and_publishes_nothing(messy_folder, tmp_path):
    root, _, _ = messy_folder
    proc = run_cli("components.extract", "--modality", "ultrasound", "--source", str(root),
                   "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2
    assert "3 of 45 inputs (6.7%) were quarantined, above the 1.0% limit" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.rejected" / "quarantine.csv").exists()


def test_missing_source_is_a_clear_error(tmp_path):
    proc = run_cli("components.extract", "--modality", "histopathology", "--source", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "is not an IDC patient tree" in proc.stderr


@pytest.mark.parametrize("modality", list(catalog.MODALITIES))
def test_sample_data_extracts_with_both_classes_and_patients(modality, sample_sources, tmp_path):
    summary = extract.run(modality, sample_sources[modality], tmp_path / "ex")
    assert summary["records_written"] == 60 and summary["quarantined"] == 0
    assert all(n > 0 for n in summary["labels"].values())
    recs = [schema.deserialize(r) for r in records.read_records(tmp_path / "ex")]
    assert {r.modality for r in recs} == {modality}
    assert len({r.source_id for r in recs}) == 60
    assert {r.source for r in recs} == {modality} and all(r.source_id.startswith(f"{modality}/") for r in recs)
    if modality == "histopathology":
        assert summary["patients"] == 6 and summary["sources"][modality]["patient_ids_from"] == "folder names"
    json.loads((tmp_path / "ex" / "summary.json").read_text())


def test_sample_data_is_deterministic(tmp_path):
    a = sample_data.run("ultrasound", tmp_path / "a", count=20, seed=7)
    b = sample_data.run("ultrasound", tmp_path / "b", count=20, seed=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert {p.suffix for p in a.rglob("*.*")} >= {".png", ".jpg", ".bmp"}


def _ddsm_record(label_normal, pixels=None) -> bytes:
    import tensorflow as tf

    image = (pixels if pixels is not None else np.full((299, 299), 90, np.uint8)).tobytes()
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
               "label_normal": tf.train.Feature(int64_list=tf.train.Int64List(value=label_normal)),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[2 * label_normal[0]] if label_normal else []))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_ddsm_empty_label_and_truncated_file_are_quarantined_not_a_crash(tmp_path):
    """Regression: a record with an empty label_normal raised IndexError and a truncated
    TFRecord file DataLossError, each crashing the whole extract. Now the record, or the
    corrupt tail of the file, is quarantined; the other files and the records before the
    corruption are kept."""
    import tensorflow as tf

    root = tmp_path / "ddsm"
    root.mkdir()
    rng = np.random.default_rng(0)
    good = [_ddsm_record([i % 2], rng.integers(0, 256, (299, 299)).astype(np.uint8)) for i in range(6)]
    with tf.io.TFRecordWriter(str(root / "a.tfrecords")) as w:
        for r in good[:3] + [_ddsm_record([])]:
            w.write(r)
    with tf.io.TFRecordWriter(str(root / "b.tfrecords")) as w:
        for r in good[3:]:
            w.write(r)
    whole = (root / "b.tfrecords").read_bytes()
    (root / "b.tfrecords").write_bytes(whole[: len(whole) - 5000])      # cut inside the last record
    summary = extract.run("mammography", root, tmp_path / "out", max_quarantine=0.5)
    quarantine = {r["source_id"]: r["reason"] for r in csv.DictReader((tmp_path / "out" / "quarantine.csv").open())}
    assert quarantine["ddsm/a.tfrecords#3"] == "record lacks feature(s) label_normal (empty)"
    assert "b.tfrecords is corrupt from record 2 on" in quarantine["ddsm/b.tfrecords#2"]
    assert summary["records_written"] == 5 and summary["quarantined"] == 2


def test_a_16_bit_image_decodes_without_float64_copies():
    """Regression: a 78 KB 16-bit 6324x6324 PNG took the gateway from 697 to 1,973 MB
    (float64 copies of every pixel). The conversion now allocates the uint16 pixels and the
    uint8 result, about 3 bytes a pixel instead of over 24, and gives the same pixels."""
    import tracemalloc

    from components.imaging import images

    side = 3000
    ramp = (np.add.outer(np.arange(side), np.arange(side)) * 7 % 60000 + 1000).astype(np.uint16)
    data = _png(ramp)
    assert len(data) < 2_000_000
    tracemalloc.start()
    decoded = images.decode(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4.5 * side * side, f"{peak / 1e6:.0f} MB for a {side}x{side} 16-bit image"
    lo, hi = int(ramp.min()), int(ramp.max())
    expected = np.clip(np.rint((ramp.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    assert np.array_equal(decoded.pixels, expected)
    # a float image decodes at 4 bytes a pixel: refused when that exceeds the RGB budget
    buf = io.BytesIO()
    Image.fromarray(np.ones((100, 100), np.float32)).save(buf, format="TIFF")
    assert images.decode(buf.getvalue(), max_pixels=20_000).pixels.shape == (100, 100)
    with pytest.raises(images.ImageRejected, match="over the budget"):
        images.decode(buf.getvalue(), max_pixels=10_000)          # its pixels allowed, their bytes not


def _manifest_folder(tmp_path, rows: list[tuple[str, str, str]]):
    """Images/<id>.png for ids img0..img9 and a CSV of (ID, Pathology, Case) rows."""
    root = tmp_path / "site"
    (root / "Images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(10):
        (root / "Images" / f"img{i}.png").write_bytes(_png(rng.integers(0, 256, (40, 48)).astype(np.uint8)))
    (tmp_path / "outside.png").write_bytes(_png(np.zeros((40, 40), np.uint8)))
    with (root / "table.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Pathology", "Case"])
        w.writerows(rows)
    return root


def test_a_manifest_with_bad_rows_quarantines_each_with_its_reason(tmp_path):
    rows = [("img0", "benign", "c0"), ("img1", "Malignant", "c0"), ("img2", "benign", "c1"),
            ("missing", "benign", "c2"),                 # row 5: no such file
            ("img3", "suspicious", "c3"),                # row 6: a label outside the map
            ("img4", "benign", "c4"), ("img4", "benign", "c4"),          # rows 7, 8: listed twice, labels agree
            ("img5", "benign", "c5"), ("img5", "malignant", "c5"),       # rows 9, 10: twice, labels disagree
            ("../../outside", "benign", "c6"),           # row 11: a path leaving the folder
            ("img6", "malignant", ""),                   # row 12: no patient
            ("img7", "malignant", "c7"), ("img8", "benign", "c8"), ("img9", "malignant", "c9")]
    root = _manifest_folder(tmp_path, rows)
    source = {"name": "site", "path": str(root), "format": "manifest", "manifest": "table.csv", "image_column": "ID",
              "path_template": "Images/{}.png", "label_column": "Pathology", "label_map": {"malignant": 1, "benign": 0},
              "patient_column": "Case"}
    summary = extract.run("ultrasound", [source], tmp_path / "out", max_quarantine=0.9)
    quarantine = {r["source_id"]: r["reason"] for r in csv.DictReader((tmp_path / "out" / "quarantine.csv").open())}
    assert quarantine == {
        "site/Images/missing.png (row 5)": "row 5: Images/missing.png does not exist",
        "site/Images/img3.png (row 6)": "row 6: label 'suspicious' is not in the label map ['benign', 'malignant']",
        "site/Images/img4.png (row 8)": "rows 7 and 8 list the same file; row 7 is kept",
        "site/Images/img5.png (row 9)": "rows 9 and 10 list the same file with different labels",
        "site/Images/img5.png (row 10)": "rows 9 and 10 list the same file with different labels",
        "site/Images/../../outside.png (row 11)": "row 11: 'Images/../../outside.png' leaves the source folder",
        "site/Images/img6.png (row 12)": "row 12: empty patient column 'Case'",
    }
    written = {r.source_id: r for r in map(schema.deserialize, records.read_records(tmp_path / "out"))}
    assert sorted(written) == [f"site/Images/img{i}.png" for i in (0, 1, 2, 4, 7, 8, 9)]
    assert written["site/Images/img1.png"].label == 1 and written["site/Images/img0.png"].label == 0   # case-insensitive
    assert written["site/Images/img0.png"].patient_id == written["site/Images/img1.png"].patient_id == "site/c0"
    assert summary["sources"]["site"]["patient_ids_from"] == "table.csv:Case"
    assert summary["quarantined"] == 7 and summary["records_written"] == 7


def test_manifest_options_on_the_command_line_and_a_wrong_column(tmp_path):
    root = _manifest_folder(tmp_path, [(f"img{i}", "malignant" if i % 2 else "benign", f"c{i // 2}") for i in range(10)])
    common = ["components.extract", "--modality", "ultrasound", "--source", str(root), "--manifest", "table.csv",
              "--image-column", "ID", "--path-template", "Images/{}.png", "--label-map", "malignant=1,benign=0",
              "--patient-column", "Case"]
    ok = run_cli(*common, "--label-column", "Pathology", "--out", str(tmp_path / "ok"))
    assert json.loads(ok.stdout)["records_written"] == 10 and json.loads(ok.stdout)["patients"] == 5
    wrong = run_cli(*common, "--label-column", "Diagnosis", "--out", str(tmp_path / "bad"), check=False)
    assert wrong.returncode == 2 and "no column 'Diagnosis'" in wrong.stderr and "ID, Pathology, Case" in wrong.stderr


def test_two_sources_keep_their_names_and_may_reuse_image_and_patient_names(tmp_path):
    """Every record says which source it came from; the same file and patient names in two
    sources stay two images of two patients."""
    a = sample_data.run("histopathology", tmp_path / "a", count=20, seed=1)
    b = sample_data.run("histopathology", tmp_path / "b", count=20, seed=1)     # the same names
    summary = extract.run("histopathology", [{"name": "north", "path": str(a)}, {"name": "south", "path": str(b)}],
                          tmp_path / "out")
    recs = [schema.deserialize(r) for r in records.read_records(tmp_path / "out")]
    assert len({r.source_id for r in recs}) == 40 and {r.source for r in recs} == {"north", "south"}
    assert len({r.patient_id for r in recs}) == 2 * summary["sources"]["north"]["patients"] == summary["patients"]
    assert summary["sources"]["north"]["records_written"] == summary["sources"]["south"]["records_written"] == 20
    with pytest.raises(ValueError, match="names must differ"):
        extract.run("histopathology", [{"name": "x", "path": str(a)}, {"name": "x", "path": str(b)}], tmp_path / "o2")
