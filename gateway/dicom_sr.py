"""The DICOM answer: what the models said of one image, as a Structured Report a PACS can file.

One Comprehensive 3D SR (built with highdicom) holding a TID 1500 Measurement Report, in the
image's own study, following IHE AI Results (AIR):
- one measurement group (TID 1501, an image-level finding that references the source image)
  per model: its Probability of cancer (DCM 111047, UCUM "1"), its decision at the model's
  operating point's threshold as a qualitative evaluation (Malignant neoplastic disease: Present
  or Absent), and its algorithm identification (TID 4019: name, version, the model card's
  SHA-256 and the operating point as parameters: the site, or the model's own, the threshold,
  the temperature and the site's acceptance evidence); a cohort compare gives three groups, and
  the cohort ensemble a fourth;
- a device observer per model (TID 1004) and a Contributing Equipment item per model
  (Processing Equipment, manufacturer, model name, version, Device UID). The Device UID is a
  name-based UUID of the model's name, version and card hash, so the same model always signs
  with the same UID and a retrained or re-carded one never does;
- patient and study copied from the image, a new series, evidence naming the image (highdicom
  derives the Current Requested Procedure Evidence Sequence), UNVERIFIED and PRELIMINARY (no
  person has read it), Content Qualification RESEARCH and a series description saying it is
  not for diagnostic use.

``source`` is the header of the image the models read; its pixels are neither needed nor kept.
"""
from __future__ import annotations

import copy
import io
import json
import uuid
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SERIES_DESCRIPTION = "AI result - research use only, not for diagnostic use"
PRODUCT_MODEL_NAME = "bcimaging gateway"   # the SR's own Manufacturer's Model Name
DEFAULT_SERIES_NUMBER = 9001          # far above acquisition series, where viewers list derived ones

PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer                 # (DCM, 111047)
NO_UNITS = codes.UCUM.NoUnits                                         # (UCUM, "1"): a probability
MALIGNANCY = Code("363346000", "SCT", "Malignant neoplastic disease")
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent                 # CID 240
# CID 7005: the equipment that processed the image into this result; IHE AIR names the AI
# model here. (DCM 109103 is "Modifying Equipment", for changes made to an instance.)
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment                  # (DCM, 109102)
# CID 100 procedure reported, by the modality of the image read
PROCEDURES = {"MG": codes.SCT.Mammography, "US": codes.SCT.UltrasonographyOfBreast}
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure
LATERALITIES = {"R": codes.SCT.Right, "L": codes.SCT.Left}

# the namespace of this product's Device UIDs; fixed forever, or every Device UID changes
DEVICE_NAMESPACE = uuid.UUID("5b0c7a4e-2d7f-5e86-9a51-3f0f6c2b8d11")

# Type 2 attributes highdicom reads from the image by attribute access; empty when absent
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                      "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
_REQUIRED_FROM_SOURCE = ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID")


@dataclass(frozen=True)
class ModelResult:
    """One model's answer on the image, as the gateway received it."""
    model_name: str                   # e.g. "mammography-resnet50-progressive"
    version: int | None               # the served version; None for the cohort ensemble
    card_sha256: str                  # hex SHA-256 of its model card (the ensemble: its record id)
    probability: float                # calibrated probability of the positive class
    threshold: float                  # decision threshold, chosen on validation
    positive: bool                    # the label the model answered at that threshold
    members: tuple[str, ...] = ()     # the ensemble's members ("name:version")
    site: str | None = None           # the site whose accepted operating point was used; None: the model's own
    temperature: float = 1.0          # the site's temperature scaling of the served probability
    acceptance_sha256: str | None = None   # the site acceptance's evidence (with a site)

    def __post_init__(self):
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"{self.model_name}: probability {self.probability} is not in [0, 1]")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"{self.model_name}: threshold {self.threshold} is not in [0, 1]")
        if len(self.card_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.card_sha256):
            raise ValueError(f"{self.model_name}: card_sha256 is not a lowercase hex SHA-256")
        if not self.temperature > 0:
            raise ValueError(f"{self.model_name}: temperature {self.temperature} is not above 0")

    @property
    def version_text(self) -> str:
        return "ensemble" if self.version is None else str(self.version)


def device_uid(result: ModelResult) -> str:
    """The model's Device UID: 2.25 + a UUID named by its name, version and card hash (RFC 4122
    name-based, as ISO/IEC 9834-8 asks of 2.25 UIDs); the same inputs, the same UID."""
    name = json.dumps([result.model_name, result.version, result.card_sha256])
    return f"2.25.{uuid.uuid5(DEVICE_NAMESPACE, name).int}"


def build_sr(source: pydicom.Dataset, results: list[ModelResult], *, manufacturer: str,
             software_version: str, series_number: int = DEFAULT_SERIES_NUMBER,
             institution: str | None = None, series_instance_uid: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR of ``results`` (one group per model, in order) on ``source``.

    ``manufacturer`` and ``software_version`` name this product (the SR's own equipment);
    ``series_instance_uid`` files several reports in one series (a new series by default)."""
    if not results:
        raise ValueError("an SR needs at least one model result")
    if len({(r.model_name, r.version) for r in results}) != len(results):
        raise ValueError("each model (name and version) may appear once in an SR")
    image = _evidence_header(source)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(results, manufacturer),
        procedure_reported=PROCEDURES.get(image.get("Modality"), IMAGING_PROCEDURE),
        imaging_measurements=[_measurement_group(image, r, manufacturer) for r in results])
    return hd.sr.Comprehensive3DSR(
        evidence=[image], content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=manufacturer, manufacturer_model_name=PRODUCT_MODEL_NAME,
        software_versions=software_version, institution_name=institution,
        series_description=SERIES_DESCRIPTION, content_qualification="RESEARCH",
        is_complete=True, is_final=False, is_verified=False,
        contributing_equipment=[_contributing_equipment(r, manufacturer) for r in results])


def to_bytes(sr: pydicom.Dataset) -> bytes:
    """The SR as a DICOM Part 10 file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class NonConformant(ValueError):
    """An attribute the report copies from the image holds a value its VR does not allow; the
    message names the attribute, never the value (it is PHI)."""

    def __init__(self, keyword: str):
        super().__init__(f"the image's {keyword} is not a conformant DICOM value")
        self.keyword = keyword


def check_copied(source: pydicom.Dataset) -> None:
    """Every patient and study attribute the report copies is valid for its VR, or NonConformant."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    from components.imaging.quiet import quiet_pydicom

    with quiet_pydicom():
        for keyword in _TYPE2_FROM_SOURCE:
            try:
                element = source[keyword] if keyword in source else None
                if element is not None and element.value not in (None, ""):
                    values = element.value if element.VM > 1 else [element.value]
                    for value in values:
                        validate_value(element.VR, value, config.RAISE)
            except Exception:
                raise NonConformant(keyword) from None


def _evidence_header(source: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of the image header without pixels, its empty Type 2 attributes present."""
    check_copied(source)
    missing = [k for k in _REQUIRED_FROM_SOURCE if not source.get(k)]
    if missing:
        raise ValueError(f"the source image has no {', '.join(missing)}")
    header = pydicom.Dataset()
    for element in source:
        if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(copy.deepcopy(element))      # the SR never shares an element with the caller
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _observation_context(results: list[ModelResult], manufacturer: str) -> hd.sr.ObservationContext:
    """TID 1001 with one device observer per model (TID 1001 takes TID 1002 one or more times;
    highdicom's constructor takes one, so the others are appended)."""
    first, *others = [_device_observer(r, manufacturer) for r in results]
    context = hd.sr.ObservationContext(observer_device_context=first)
    for observer in others:
        context.extend(observer)
    return context


def _device_observer(result: ModelResult, manufacturer: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(result), name=f"{result.model_name} {result.version_text}",
            manufacturer_name=manufacturer, model_name=result.model_name))


def _measurement_group(image: pydicom.Dataset, result: ModelResult,
                       manufacturer: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one model: an image-level finding, so no region, the image as its source."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{result.model_name} {result.version_text}"),
        algorithm_id=_algorithm(result, manufacturer),
        finding_sites=[_breast(image)],
        measurements=[hd.sr.Measurement(name=PROBABILITY_OF_CANCER, value=result.probability, unit=NO_UNITS)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=MALIGNANCY, value=PRESENT if result.positive else ABSENT)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)])


def _algorithm(result: ModelResult, manufacturer: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019; the card hash pins exactly which trained model this was, the operating point
    (whose: a site's accepted one or the model's own; its threshold and temperature) how its
    probability became the finding: the same model reads differently at different sites."""
    parameters = [f"{_hash_name(result)}={result.card_sha256}",
                  f"operating_point={'site ' + result.site if result.site else 'model own'}",
                  f"decision_threshold={result.threshold:.6g}", f"temperature={result.temperature:.6g}"]
    if result.acceptance_sha256:
        parameters.append(f"site_acceptance_sha256={result.acceptance_sha256}")
    parameters += [f"member={m}" for m in result.members]
    return hd.sr.AlgorithmIdentification(name=result.model_name, version=result.version_text,
                                         parameters=parameters, manufacturer=manufacturer)


def _hash_name(result: ModelResult) -> str:
    """What ``card_sha256`` hashes: a served model's card, or the ensemble's record."""
    return "ensemble_record_sha256" if result.version is None else "model_card_sha256"


def _breast(image: pydicom.Dataset) -> hd.sr.FindingSite:
    """The breast, with its side when the image says it (MG: Image Laterality, Type 1)."""
    side = image.get("ImageLaterality") or image.get("Laterality")
    return hd.sr.FindingSite(anatomic_location=codes.SCT.Breast, laterality=LATERALITIES.get(side))


def _contributing_equipment(result: ModelResult, manufacturer: str) -> hd.ContributingEquipment:
    """The IHE AIR item naming the AI model: Manufacturer, Manufacturer's Model Name, Software
    Versions and Device UID (set afterwards: highdicom's constructor has no argument for it)."""
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer, purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=result.model_name, software_versions=result.version_text,
        contribution_description=f"AI model {result.model_name} {result.version_text}, "
                                 f"{_hash_name(result)} {result.card_sha256}")
    equipment.DeviceUID = device_uid(result)
    return equipment
