"""The DICOM answer (gateway.dicom_sr): a valid Comprehensive 3D SR, TID 1500, that says what
each model said of the image, in the image's study, and signs each model with its Device UID."""
from __future__ import annotations

import hashlib
import io

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from gateway import dicom_sr
from gateway.dicom_sr import ModelResult
from tests import dciodvfy

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
BACKBONES = ("resnet50", "vgg16", "densenet121")


def image_header(modality: str, **changes) -> pydicom.Dataset:
    """A small MG (For Presentation) or US image header, as a PACS would send it.
    (To be replaced by tests/dicom_fixtures.py.)"""
    ds = pydicom.Dataset()
    ds.SOPClassUID = MG_FOR_PRESENTATION if modality == "MG" else US_IMAGE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "BC-0042", "Doe^Jane", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "7", "ACC-0042"
    ds.ReferringPhysicianName = "Smith^John"
    ds.Manufacturer = "Acme Imaging"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PixelRepresentation = 64, 48, 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PhotometricInterpretation = 16, 12, 11, "MONOCHROME2"
    if modality == "MG":
        ds.ImageLaterality = "L"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def model_result(name: str, version: int = 3, card: str = "card", probability: float = 0.83,
                 threshold: float = 0.41) -> ModelResult:
    return ModelResult(name, version, hashlib.sha256(card.encode()).hexdigest(), probability, threshold,
                       probability >= threshold)


def cohort_results(modality: str = "mammography") -> list[ModelResult]:
    """A three-model compare and its ensemble (the mean), as the gateway's compare answers."""
    members = [model_result(f"{modality}-{b}-progressive", 3, b, p) for b, p in zip(BACKBONES, (0.83, 0.35, 0.62))]
    mean = sum(m.probability for m in members) / len(members)
    ensemble = ModelResult(f"{modality}-ensemble-progressive", None, hashlib.sha256(b"run").hexdigest(), mean,
                           0.5, mean >= 0.5, members=tuple(f"{m.model_name}:{m.version}" for m in members))
    return members + [ensemble]


def build(source: pydicom.Dataset, results: list[ModelResult]) -> hd.sr.Comprehensive3DSR:
    return dicom_sr.build_sr(source, results, manufacturer="bcimaging", software_version="1.4.0",
                             institution="Example Hospital")


def read_back(sr: pydicom.Dataset) -> hd.sr.Comprehensive3DSR:
    """The SR as a receiver gets it: Part 10 bytes, parsed again."""
    return hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(dicom_sr.to_bytes(sr))))


def groups(sr: hd.sr.Comprehensive3DSR) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    return sr.content.get_image_measurement_groups()            # content: the TID 1500 MeasurementReport


CASES = {"MG-one-model": ("MG", lambda: [model_result("mammography-resnet50-progressive")]),
         "MG-cohort-and-ensemble": ("MG", cohort_results),
         "US-one-model": ("US", lambda: [model_result("ultrasound-vgg16-unfrozen", probability=0.12)]),
         "US-cohort-and-ensemble": ("US", lambda: cohort_results("ultrasound"))}


@pytest.fixture(params=sorted(CASES))
def case(request):
    modality, results = CASES[request.param]
    return image_header(modality), results()


@dciodvfy.required
def test_the_sr_is_valid_dicom(case):
    source, results = case
    found = dciodvfy.validate(dicom_sr.to_bytes(build(source, results)))
    assert not found.errors, found.describe()


def test_each_model_is_a_group_with_its_probability_and_finding(case):
    source, results = case
    read = groups(read_back(build(source, results)))
    assert len(read) == len(results)
    for group, result in zip(read, results):
        (probability,) = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
        assert probability.value == pytest.approx(result.probability, abs=1e-9)
        assert probability.unit == codes.UCUM.NoUnits and probability.unit.value == "1"
        (finding,) = group.get_qualitative_evaluations(name=dicom_sr.MALIGNANCY)
        assert finding.value == (codes.SCT.Present if result.positive else codes.SCT.Absent)
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [source.SOPInstanceUID]
        assert group.tracking_identifier.startswith(result.model_name)


def test_each_group_names_its_algorithm_version_and_card(case):
    source, results = case
    for group, result in zip(groups(read_back(build(source, results))), results):
        text = {item.name.meaning: [] for item in group[0].ContentSequence}
        for item in group[0].ContentSequence:
            text[item.name.meaning].append(getattr(item, "value", None))
        assert text["Algorithm Name"] == [result.model_name]
        assert text["Algorithm Version"] == [result.version_text]
        assert f"{'model_card' if result.version else 'ensemble_record'}_sha256={result.card_sha256}" \
            in text["Algorithm Parameters"]
        assert f"decision_threshold={result.threshold:.6g}" in text["Algorithm Parameters"]
        assert [f"member={m}" for m in result.members] == [p for p in text["Algorithm Parameters"]
                                                            if p.startswith("member=")]


@dciodvfy.required
def test_each_group_names_its_operating_point_a_sites_or_the_models_own():
    import dataclasses

    own, other = cohort_results("ultrasound")[:2]
    at_site = dataclasses.replace(other, site="north", temperature=1.8, threshold=0.27, acceptance_sha256="c" * 64)
    sr = build(image_header("US"), [own, at_site])
    found = dciodvfy.validate(dicom_sr.to_bytes(sr))
    assert not found.errors, found.describe()
    said = []
    for group in groups(read_back(sr)):
        said.append([item.value for item in group[0].ContentSequence if item.name.meaning == "Algorithm Parameters"])
    assert {"operating_point=model own", "decision_threshold=0.41", "temperature=1"} <= set(said[0])
    assert not any(p.startswith("site_acceptance_sha256=") for p in said[0])
    assert {"operating_point=site north", "decision_threshold=0.27", "temperature=1.8",
            f"site_acceptance_sha256={'c' * 64}"} <= set(said[1])
    with pytest.raises(ValueError, match="temperature"):
        dataclasses.replace(own, temperature=0.0)


def test_the_sr_is_filed_in_the_image_study_in_a_series_of_its_own(case):
    source, results = case
    first, second = read_back(build(source, results)), read_back(build(source, results))
    assert first.SOPClassUID == Comprehensive3DSRStorage and first.Modality == "SR"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyDate", "StudyID", "ReferringPhysicianName"):
        assert first[keyword].value == source[keyword].value, keyword
    assert first.SeriesInstanceUID not in (source.SeriesInstanceUID, second.SeriesInstanceUID)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    (evidence,) = first.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence] \
        == [(source.SOPClassUID, source.SOPInstanceUID)]


def test_the_sr_says_no_person_verified_it_and_it_is_not_for_diagnosis(case):
    sr = read_back(build(*case))
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in sr
    assert sr.SeriesDescription == dicom_sr.SERIES_DESCRIPTION
    assert "not for diagnostic use" in sr.SeriesDescription and sr.ContentQualification == "RESEARCH"
    assert (sr.Manufacturer, sr.SoftwareVersions, sr.InstitutionName) == ("bcimaging", "1.4.0", "Example Hospital")
    assert sr.SeriesNumber == dicom_sr.DEFAULT_SERIES_NUMBER and sr.InstanceNumber == 1


def test_each_model_is_contributing_equipment_and_a_device_observer_with_its_device_uid(case):
    source, results = case
    sr = read_back(build(source, results))
    ai = [e for e in sr.ContributingEquipmentSequence
          if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102" and e.Manufacturer == "bcimaging"]
    assert [(e.ManufacturerModelName, e.SoftwareVersions, e.DeviceUID) for e in ai] \
        == [(r.model_name, r.version_text, dicom_sr.device_uid(r)) for r in results]
    assert all(e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM" for e in ai)
    observers = [c.observer_identifying_attributes for c in sr.content.get_observer_contexts(codes.DCM.Device)]
    assert [(o.uid, o.model_name) for o in observers] == [(dicom_sr.device_uid(r), r.model_name) for r in results]


def test_the_device_uid_changes_exactly_when_the_model_does():
    model = model_result("mammography-resnet50-progressive", version=3, card="card-a")
    same = model_result("mammography-resnet50-progressive", version=3, card="card-a", probability=0.1)
    uid = dicom_sr.device_uid(model)
    assert dicom_sr.device_uid(same) == uid                       # another answer, the same model
    assert dicom_sr.device_uid(model_result(model.model_name, 4, "card-a")) != uid
    assert dicom_sr.device_uid(model_result(model.model_name, 3, "card-b")) != uid
    assert dicom_sr.device_uid(model_result("mammography-vgg16-progressive", 3, "card-a")) != uid
    assert uid.startswith("2.25.") and uid[5:].isdigit() and len(uid) <= 64
    assert pydicom.uid.UID(uid).is_valid


def test_the_device_uid_is_the_same_in_every_release():
    # a changed namespace or naming would give every deployed model a new identity in the PACS
    model = ModelResult("mammography-resnet50-progressive", 3, "0" * 64, 0.5, 0.5, True)
    assert dicom_sr.device_uid(model) == "2.25.205313687084811920584498853631733868066"


def test_the_side_of_the_breast_comes_from_the_image():
    sr = read_back(build(image_header("MG", ImageLaterality="R"), [model_result("mammography-vgg16-unfrozen")]))
    (site,) = groups(sr)[0].finding_sites
    assert site.value == codes.SCT.Breast and site.laterality == codes.SCT.Right
    sr = read_back(build(image_header("US"), [model_result("ultrasound-vgg16-unfrozen")]))
    assert groups(sr)[0].finding_sites[0].laterality is None


@dciodvfy.required
def test_a_sparse_header_with_pixels_and_a_non_ascii_name_still_gives_a_valid_sr():
    source = image_header("US", SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Zoë", PixelData=b"\0" * 64)
    for keyword in ("StudyID", "StudyTime", "ReferringPhysicianName", "AccessionNumber", "PatientBirthDate"):
        delattr(source, keyword)
    sr = build(source, [model_result("ultrasound-densenet121-progressive")])
    assert "PixelData" not in sr and "PixelData" in source         # the caller's header is left as it was
    found = dciodvfy.validate(dicom_sr.to_bytes(sr))
    assert not found.errors, found.describe()
    read = read_back(sr)
    assert str(read.PatientName) == "Müller^Zoë" and read.StudyID == "" and read.AccessionNumber == ""


@pytest.mark.parametrize("results, message", [
    ([], "at least one model result"),
    ([model_result("mammography-vgg16-unfrozen")] * 2, "may appear once"),
])
def test_results_that_make_no_report_are_refused(results, message):
    with pytest.raises(ValueError, match=message):
        build(image_header("MG"), results)


def test_a_source_without_identity_is_refused():
    source = image_header("MG")
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build(source, [model_result("mammography-vgg16-unfrozen")])


@pytest.mark.parametrize("changes, message", [
    ({"probability": 1.5}, "probability"), ({"threshold": -0.1}, "threshold"),
    ({"card_sha256": "abc"}, "SHA-256"), ({"card_sha256": "A" * 64}, "SHA-256"),
])
def test_a_malformed_model_result_is_refused(changes, message):
    fields = dict(model_name="m", version=1, card_sha256="0" * 64, probability=0.5, threshold=0.5, positive=True)
    with pytest.raises(ValueError, match=message):
        ModelResult(**{**fields, **changes})


def test_part10_bytes_have_the_preamble_and_file_meta():
    sr = build(image_header("MG"), [model_result("mammography-resnet50-progressive")])
    data = dicom_sr.to_bytes(sr)
    assert data[128:132] == b"DICM"
    meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    assert meta.MediaStorageSOPClassUID == Comprehensive3DSRStorage
    assert meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
