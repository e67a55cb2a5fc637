"""Extract on DICOM sources: a CBIS-DDSM-style folder (the TCIA retriever's layout, the four
case-description CSVs) and a plain labels manifest, each with bad rows. The records equal those
of the same windowed pixels extracted from PNG files; every bad row is quarantined with its
reason; and no file the run writes, nor its log, holds a patient's name, ID, birth date, case
folder, UID or the PHI key."""
import collections
import csv
import gzip
import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import config, uid

from components.core import cli, phi
from components.data import dicom_folder, records, schema, sources
from components import extract
from tests import dicom_fixtures as fx
from tests.test_dicom import linear

KEY = b"0123456789abcdef-test-only-phi-key"
PATIENTS = {"P_00001": ("DOE^JANE", "PID-12345", "19700101"),
            "P_00002": ("ROE^MARY", "PID-23456", "19650202"),
            "P_00003": ("POE^ANNA", "PID-34567", "19800303")}
CSVS = {"mass_train": "mass_case_description_train_set.csv", "calc_train": "calc_case_description_train_set.csv",
        "mass_test": "mass_case_description_test_set.csv", "calc_test": "calc_case_description_test_set.csv"}
HEADER = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
          "abnormality type", "assessment", "pathology", "subtlety", "image file path", "cropped image file path",
          "ROI mask file path"]
# (case folder prefix, patient, side, view, CSV, [(abnormality id, pathology)]): six readable images
GOOD = [("Mass-Training", "P_00001", "LEFT", "CC", "mass_train", [(1, "MALIGNANT"), (2, "BENIGN")]),
        ("Mass-Training", "P_00001", "LEFT", "MLO", "mass_train", [(1, "BENIGN")]),
        ("Calc-Training", "P_00002", "RIGHT", "CC", "calc_train", [(1, "BENIGN_WITHOUT_CALLBACK")]),
        ("Calc-Training", "P_00002", "RIGHT", "MLO", "calc_train", [(1, "MALIGNANT")]),
        ("Mass-Test", "P_00003", "LEFT", "CC", "mass_test", [(1, "BENIGN")]),
        ("Calc-Test", "P_00003", "RIGHT", "CC", "calc_test", [(1, "MALIGNANT")])]
CBIS_LABELS = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}


def _png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _identity(patient: str) -> dict:
    name, pid, birth = PATIENTS[patient]
    return {"PatientName": name, "PatientID": pid, "PatientBirthDate": birth}


class CbisFolder:
    """CBIS-DDSM as the NBIA retriever writes it today (``<case>/<date>-DDSM-<n>/<series>/1-1.dcm``)
    and the CSVs as TCIA publishes them (``<case>/<study UID>/<series UID>/000000.dcm``)."""

    def __init__(self, root: Path):
        self.root, self.rows, self.phi = root, collections.defaultdict(list), set()
        root.mkdir(parents=True)
        self.phi.update(s for identity in PATIENTS.values() for s in identity)
        self.phi.update(PATIENTS)

    def add_file(self, data: bytes, case: str, file_name: str = "1-1.dcm") -> pydicom.Dataset:
        folder = self.root / case / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_bytes(data)
        with dicom_folder.quiet_pydicom():         # one file's SOP Instance UID is invalid on purpose
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            self.phi.update({case, folder.parent.name, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                             str(ds.SOPInstanceUID)})
        return ds

    def add_row(self, csv_name: str, case: str, patient: str, side: str, view: str, abnormality, pathology: str,
                series: str, study: str) -> str:
        path = f"{case}/{study}/{series}/000000.dcm"
        self.rows[csv_name].append([patient, 3, side, view, abnormality, "mass", 4, pathology, 3, path,
                                    f"{case}_{abnormality}/{study}/{uid.generate_uid()}/000000.dcm",
                                    f"{case}_{abnormality}/{study}/{uid.generate_uid()}/000001.dcm"])
        self.phi.update({study, series, f"{case}_{abnormality}"})
        return f"{CSVS[csv_name]} row {len(self.rows[csv_name]) + 1}"       # line 1 is the header

    def write_csvs(self) -> None:
        for name, file_name in CSVS.items():
            with (self.root / file_name).open("w", newline="") as f:
                csv.writer(f).writerows([HEADER, *self.rows[name]])


@pytest.fixture()
def cbis(tmp_path):
    """Six readable mammograms (one with two abnormalities) and six bad rows; returns the folder,
    the expected 8-bit image, label and patient of each readable image by its series UID, and
    the expected reason of each bad row by its place."""
    folder = CbisFolder(tmp_path / "CBIS-DDSM")
    expected, reasons, studies, first_row = {}, {}, {}, {}
    center, width = fx.MG_WINDOWS[0]
    for i, (prefix, patient, side, view, csv_name, abnormalities) in enumerate(GOOD):
        case = f"{prefix}_{patient}_{side}_{view}"
        pixels = fx.breast(64, 48, seed=i)
        series, study = uid.generate_uid(), uid.generate_uid()
        folder.add_file(fx.mammogram(pixels, laterality=side[0], view=view, SeriesInstanceUID=series,
                                     StudyInstanceUID=study, **_identity(patient)), case)
        for abnormality, pathology in abnormalities:
            where = folder.add_row(csv_name, case, patient, side, view, abnormality, pathology, series, study)
            first_row.setdefault(series, where)
        label = max(CBIS_LABELS[p] for _, p in abnormalities)      # positive when any abnormality is malignant
        expected[series], studies[series] = (linear(pixels, center, width), label, patient), study

    def bad_file(data, case, file_name="1-1.dcm", csv_name="mass_train", pathology="BENIGN", patient="P_00002"):
        ds = folder.add_file(data, case, file_name)
        return folder.add_row(csv_name, case, patient, "LEFT", "CC", 1, pathology, str(ds.SeriesInstanceUID),
                              str(ds.StudyInstanceUID))

    # the same abnormality of image 2 listed again: the repeat is refused, the first row kept
    prefix, patient, side, view, csv_name, _ = GOOD[1]
    series = list(expected)[1]
    kept = first_row[series]
    repeat = folder.add_row(csv_name, f"{prefix}_{patient}_{side}_{view}", patient, side, view, 1, "BENIGN", series,
                            studies[series])
    reasons[repeat] = f"{kept} and {repeat} list the same abnormality of one file; {kept} is kept"
    # a pathology outside the map (its file is fine)
    where = bad_file(fx.mammogram(fx.breast(64, 48, seed=10), **_identity("P_00001")), "Mass-Training_P_00001_RIGHT_CC",
                     pathology="UNPROVEN", patient="P_00001")
    reasons[where] = (f"{where}: the label is not in the label map "
                      "['BENIGN', 'BENIGN_WITHOUT_CALLBACK', 'MALIGNANT']")
    # a series no file in the folder holds
    where = folder.add_row("calc_train", "Calc-Training_P_00002_LEFT_CC", "P_00002", "LEFT", "CC", 1, "BENIGN",
                           uid.generate_uid(), uid.generate_uid())
    reasons[where] = f"{where}: no DICOM file in the source folder has the listed SeriesInstanceUID"
    # a file cut inside its pixel data: the reader's reason
    where = bad_file(fx.truncated(fx.mammogram(fx.breast(64, 48, seed=11), **_identity("P_00003"))),
                     "Mass-Training_P_00003_LEFT_MLO", file_name="1-2", patient="P_00003")   # no extension: by content
    reasons[where] = f"{where}: truncated DICOM pixel data"
    # an ultrasound instance in a mammography manifest
    where = bad_file(fx.ultrasound(fx.sonogram(48, 64), **_identity("P_00002")), "Calc-Training_P_00002_LEFT_MLO",
                     csv_name="calc_train", pathology="MALIGNANT")
    reasons[where] = (f"{where}: the DICOM file is Ultrasound Image Storage (ultrasound); "
                      "this model reads mammography")
    # a vendor's SOP Instance UID that carries the patient ID: refused, and the value withheld
    ds = pydicom.dcmread(io.BytesIO(fx.mammogram(fx.breast(64, 48, seed=12), **_identity("P_00001"))))
    with config.disable_value_validation():
        ds.SOPInstanceUID = "1.2.840.PID-12345.7"
        data = fx.part10(ds, uid.ExplicitVRLittleEndian)
    where = bad_file(data, "Mass-Training_P_00001_LEFT_ML", patient="P_00001")
    reasons[where] = f"{where}: invalid SOPInstanceUID (a UID is digits"
    (folder.root / "LICENSE.txt").write_text("not a DICOM file, and listed nowhere\n")
    folder.write_csvs()
    return folder, expected, reasons


def _quarantine(out: Path) -> dict[str, str]:
    return {r["source_id"]: r["reason"] for r in csv.DictReader((out / "quarantine.csv").open())}


def _records(out: Path) -> dict[str, schema.Record]:
    return {r.source_id: r for r in map(schema.deserialize, records.read_records(out))}


def _pixels(record: schema.Record) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record.image_png)))


def _written_bytes(*folders: Path):
    """(name relative to its folder, content) of every file under ``folders``; gzip content
    (the TFRecord shards) inflated, so a PHI string cannot hide in the compression."""
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            yield path.relative_to(folder).as_posix(), gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def assert_no_phi(phi_strings, *folders: Path, logs: str = "") -> int:
    """No PHI string (case-insensitive) in any file name or content under ``folders``, nor in
    ``logs``; the number of files searched."""
    needles = sorted({s.lower().encode() for s in phi_strings if s})
    found, searched = [], 0
    for name, data in _written_bytes(*folders):
        searched += 1
        haystack = name.lower().encode() + b"\n" + data.lower()
        found += [(name, n.decode()) for n in needles if n in haystack]
    found += [("log", n.decode()) for n in needles if n in logs.lower().encode()]
    assert not found, f"PHI in artifacts: {found}"
    return searched


def test_cbis_ddsm_preset_equals_png_extract_quarantines_bad_rows_and_leaks_no_phi(cbis, tmp_path, capfd, caplog):
    folder, expected, reasons = cbis
    key_file = tmp_path / "phi.key"
    key_file.write_bytes(KEY + b"\n")
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    argv = ["--modality", "mammography", "--source", str(folder.root), "--source-name", "cbis",
            "--manifest-preset", "cbis-ddsm", "--phi-key-file", str(key_file), "--max-quarantine", "0.9",
            "--out", str(out)]
    assert cli.main(extract.build_parser(), extract._cli, argv, allow_extra=True) == 0
    logs = "".join(capfd.readouterr()) + caplog.text

    # every bad row quarantined with its reason, named by a pseudonym and its row
    quarantine = _quarantine(out)
    assert all(sid.startswith("cbis/") and sid.endswith(")") for sid in quarantine)
    by_place = {sid.split(" (", 1)[1].rstrip(")"): reason for sid, reason in quarantine.items()}
    assert set(by_place) == set(reasons)
    for where, reason in reasons.items():
        assert by_place[where].startswith(reason), (where, by_place[where])
    # the same windowed pixels, labels and patient groups as the PNG extract of them
    dicom_records = _records(out)
    png_records = _png_extract(expected, tmp_path)
    assert len(dicom_records) == len(png_records) == len(GOOD)
    groups = {"dicom": collections.defaultdict(set), "png": collections.defaultdict(set)}
    for i, (series, (pixels, label, patient)) in enumerate(expected.items()):
        record = dicom_records[f"cbis/{phi.pseudonym(KEY, 'image', series)}"]
        twin = png_records[f"png/Images/img{i}.png"]
        assert np.array_equal(_pixels(record), pixels) and np.array_equal(_pixels(record), _pixels(twin))
        assert record.label == twin.label == label and (record.height, record.width) == (64, 48)
        assert record.patient_id == f"cbis/{phi.pseudonym(KEY, 'patient', patient)}"
        groups["dicom"][record.patient_id].add(i)
        groups["png"][twin.patient_id].add(i)
    assert sorted(map(sorted, groups["dicom"].values())) == sorted(map(sorted, groups["png"].values())) \
        == [[0, 1], [2, 3], [4, 5]]
    assert [r.label for r in dicom_records.values()].count(1) == 3      # image 0: one malignant of two abnormalities

    summary = json.loads((out / "summary.json").read_text())
    assert summary["records_written"] == 6 and summary["quarantined"] == 6 and summary["patients"] == 3
    assert summary["pseudonyms"]["key_id"] == phi.key_id(KEY) and summary["pseudonyms"]["sources"] == ["cbis"]
    assert summary["sources"]["cbis"]["patient_ids_from"].endswith(":patient_id (keyed hash)")
    searched = assert_no_phi(folder.phi | {KEY.decode()}, out, logs=logs)
    assert searched >= 4          # inputs.csv, quarantine.csv, summary.json, the shards


def _png_extract(expected: dict, tmp_path: Path) -> dict[str, schema.Record]:
    """The expected 8-bit images as PNG files with a manifest (label, patient), extracted."""
    root = tmp_path / "png"
    (root / "Images").mkdir(parents=True)
    rows = [["ID", "label", "Case"]]
    for i, (pixels, label, patient) in enumerate(expected.values()):
        (root / "Images" / f"img{i}.png").write_bytes(_png(pixels))
        rows.append([f"img{i}", "positive" if label else "negative", patient])
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    source = {"name": "png", "path": str(root), "format": "manifest", "manifest": "labels.csv", "image_column": "ID",
              "path_template": "Images/{}.png", "label_column": "label",
              "label_map": {"positive": 1, "negative": 0}, "patient_column": "Case"}
    extract.run("mammography", [source], tmp_path / "png-out")
    return _records(tmp_path / "png-out")


def test_a_plain_manifest_groups_by_patient_id_and_quarantines_its_bad_rows(cbis, tmp_path, capfd):
    """Files named by path, no patient column: the patient is the DICOM PatientID (hashed)."""
    folder, expected, _ = cbis
    files = sorted(p.relative_to(folder.root).as_posix() for p in folder.root.rglob("1-1.dcm"))
    ids = {}
    for f in files:
        with dicom_folder.quiet_pydicom():
            ds = pydicom.dcmread(folder.root / f, stop_before_pixels=True)
        if str(ds.SeriesInstanceUID) in expected:
            ids[f] = ds
    good = sorted(ids)
    rows = [["file", "finding"]] + [[f, "malignant" if i % 2 else "benign"] for i, f in enumerate(good)]
    rows += [[good[0], "benign"],                     # row 8: the first file again, the same label
             ["no/such/file.dcm", "benign"],          # row 9: missing
             ["LICENSE.txt", "benign"],               # row 10: no DICOM (by content)
             ["../outside.dcm", "benign"],            # row 11: leaves the folder
             [good[1], "maybe"]]                      # row 12: a label outside the map
    with (folder.root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "outside.dcm").write_bytes(fx.mammogram(fx.breast(64, 48)))
    source = {"name": "site", "path": str(folder.root), "format": "dicom", "manifest": "labels.csv",
              "image_column": "file", "label_column": "finding", "label_map": {"malignant": 1, "benign": 0}}
    summary = extract.run("mammography", [source], tmp_path / "out", max_quarantine=0.9, phi_key=KEY)
    logs = "".join(capfd.readouterr())
    quarantine = _quarantine(tmp_path / "out")
    image = {f: phi.pseudonym(KEY, "image", f) for f in good}
    assert quarantine == {
        f"site/{image[good[0]]} (row 8)": "row 2 and row 8 list the same file; row 2 is kept",
        f"site/{phi.pseudonym(KEY, 'image', 'no/such/file.dcm')} (row 9)": "row 9: the listed file does not exist",
        f"site/{phi.pseudonym(KEY, 'image', 'LICENSE.txt')} (row 10)":
            "row 10: not a DICOM Part 10 file (no 128-byte preamble followed by 'DICM')",
        "site/row 11": "row 11: the listed path leaves the source folder",
        f"site/{image[good[1]]} (row 12)": "row 12: the label is not in the label map ['benign', 'malignant']",
    }
    written = _records(tmp_path / "out")
    assert sorted(written) == sorted(f"site/{image[f]}" for f in good)
    for i, f in enumerate(good):
        record = written[f"site/{image[f]}"]
        assert record.label == i % 2
        assert record.patient_id == f"site/{phi.pseudonym(KEY, 'patient', str(ids[f].PatientID))}"
        assert np.array_equal(_pixels(record), expected[str(ids[f].SeriesInstanceUID)][0])
    assert summary["patients"] == 3 and summary["sources"]["site"]["patient_ids_from"] == "DICOM PatientID (keyed hash)"
    assert_no_phi(folder.phi | set(good) | {KEY.decode()}, tmp_path / "out", logs=logs)


def test_files_named_by_sop_instance_uid_are_found_by_content(cbis):
    """The uid column names instances; the reader finds them among every DICOM file in the
    folder, whatever their names, and reads only the file meta to do so."""
    folder, expected, _ = cbis
    by_series = {}
    for path in folder.root.rglob("*"):
        if path.is_file() and path.suffix != ".csv":
            data = path.read_bytes()
            if data[128:132] == b"DICM":
                with dicom_folder.quiet_pydicom():
                    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                    by_series[str(ds.SeriesInstanceUID)] = str(ds.SOPInstanceUID)
    series = list(expected)[:2]
    with (folder.root / "uids.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["SOP Instance UID", "label"], [by_series[series[0]], "1"],
                                 [by_series[series[1]], "0"], ["1.2.3.4.5", "0"]])
    reader = sources.from_dict({"name": "uids", "path": str(folder.root), "format": "dicom", "manifest": "uids.csv",
                                "uid_column": "SOP Instance UID", "label_column": "label",
                                "label_map": {"1": 1, "0": 0}}).reader("mammography", KEY)
    items = [item for unit in reader.units() for item in reader.items(unit)]
    assert [i.problem for i in items] == [None, None,
                                          "row 4: no DICOM file in the source folder has the listed SOPInstanceUID"]
    assert [i.source_id for i in items[:2]] == [phi.pseudonym(KEY, "image", by_series[s]) for s in series]
    assert np.array_equal(items[0].decoded.pixels, expected[series[0]][0]) and items[0].label == 1
    assert "key" not in repr(reader).lower() and KEY.decode() not in repr(reader)


def test_a_dicom_source_without_a_key_is_a_clear_error(cbis, tmp_path, monkeypatch, capsys):
    folder, _, _ = cbis
    monkeypatch.delenv(phi.KEY_ENV, raising=False)
    monkeypatch.delenv(phi.KEY_FILE_ENV, raising=False)
    argv = ["--modality", "mammography", "--source", str(folder.root), "--manifest-preset", "cbis-ddsm",
            "--out", str(tmp_path / "out")]
    assert cli.main(extract.build_parser(), extract._cli, argv, allow_extra=True) == 2
    assert "needs a PHI key" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "short.key").write_text("too short")
    monkeypatch.setenv(phi.KEY_FILE_ENV, str(tmp_path / "short.key"))
    assert cli.main(extract.build_parser(), extract._cli, argv, allow_extra=True) == 2
    assert "use at least 16 random bytes" in capsys.readouterr().err


def test_phi_redaction_and_preset_options():
    assert phi.redact("invalid SOPInstanceUID '1.2.PID-7' (a UID is digits)", ["PID-7"]) == \
        "invalid SOPInstanceUID <withheld> (a UID is digits)"
    assert phi.redact("series 1.2.840.10008.1 of Mass-Training_P_00001_LEFT_CC, r=0.97",
                      ["Mass-Training_P_00001_LEFT_CC"]) == "series <uid> of <withheld>, r=0.97"
    assert dicom_folder.uid_in("Case_P_1/1.2.3.4/1.2.3.5/000000.dcm") == "1.2.3.5" and dicom_folder.uid_in("1.2.3") == "1.2.3"
    source = sources.from_dict({"name": "cbis", "path": "/data/cbis", "preset": "cbis-ddsm",
                                "manifest": ["mass_case_description_train_set.csv"]})
    assert source.format == "dicom" and source.manifest == ("mass_case_description_train_set.csv",)
    assert source.uid_attribute == "SeriesInstanceUID" and source.abnormality_column == "abnormality id"
    assert sources.from_dict(source.to_dict()) == source
    assert "uid_column" not in sources.from_dict({"name": "busi", "path": "/data/busi"}).to_dict()


def test_the_command_line_builds_the_sources_it_built_before_and_dicom_ones():
    def source(*argv):
        args, _ = extract.build_parser().parse_known_args(["--modality", "mammography", "--out", "x", *argv])
        return extract.source_from_args(args)[0]

    plain = source("--source", "/data/site", "--manifest", "table.csv", "--image-column", "ID", "--path-template",
                   "Images/{}.png", "--label-column", "Pathology", "--label-map", "malignant=1,benign=0",
                   "--patient-column", "Case")
    assert plain == sources.Source(name="site", path="/data/site", format="manifest", manifest="table.csv",
                                   label_map={"malignant": 1, "benign": 0}, image_column="ID",
                                   path_template="Images/{}.png", label_column="Pathology", patient_column="Case")
    assert not {"uid_column", "uid_attribute", "abnormality_column"} & set(plain.to_dict())
    cbis = source("--source", "/data/CBIS-DDSM", "--manifest-preset", "cbis-ddsm",
                  "--manifest", "mass_case_description_train_set.csv", "--label-map", "MALIGNANT=1,BENIGN=0")
    assert cbis.format == "dicom" and cbis.manifest == ("mass_case_description_train_set.csv",)
    assert (cbis.uid_column, cbis.uid_attribute, cbis.patient_column, cbis.abnormality_column) == \
        ("image file path", "SeriesInstanceUID", "patient_id", "abnormality id")
    assert cbis.label_map == {"MALIGNANT": 1, "BENIGN": 0}          # given beside the preset: it wins


def test_pydicom_says_nothing_inside_the_reader(caplog, recwarn):
    """pydicom's warnings quote header values; its child loggers (pydicom.pixels...) too."""
    import warnings

    caplog.set_level(logging.DEBUG)
    with dicom_folder.quiet_pydicom():
        logging.getLogger("pydicom").warning("Invalid value for VR LO: 'PID-12345'")
        logging.getLogger("pydicom.pixels.decoders.base").warning("DOE^JANE")
        warnings.warn("Invalid value for VR DA: '19700101'")
    assert not caplog.records and not recwarn.list
    logging.getLogger("pydicom").warning("outside the reader")
    assert len(caplog.records) == 1                 # restored
