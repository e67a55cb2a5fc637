"""DICOM uploads through the real gateway, with the embedded model server over real gRPC on
loopback serving SavedModels made by components.export (conftest's trained models): a DICOM
gets the probability of a PNG of the pixels the standard's pixel path gives (computed here, not
by the reader), MONOCHROME1 and its MONOCHROME2 twin agree, every way of sending one works
(multipart, JSON base64, a raw application/dicom body, OIP v2 BYTES, the pages), and what is no
image for the model (a Structured Report, another modality's image) is a clear 422."""
import base64
import io

import numpy as np
import pytest
from PIL import Image
from pydicom import uid

from gateway import uploads
from gateway.app import create_app
from serving import repository
from serving.server import Server
from tests import dciodvfy
from tests import dicom_fixtures as fx
from tests.conftest import gateway_config, signed_in
from tests.test_dicom import linear

MAMMOGRAPHY = "mammography-resnet50-progressive"
ULTRASOUND = ("ultrasound-resnet50-unfrozen", "ultrasound-vgg16-unfrozen", "ultrasound-densenet121-unfrozen")


@pytest.fixture(scope="module")
def stack(pipeline_outputs, tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("dicom-repo")
    for name in (MAMMOGRAPHY, *ULTRASOUND):
        repository.push(pipeline_outputs[name] / "saved_model", root)
    server = Server(root, port=0, poll_seconds=3600)
    app = create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}", deadline_s=20.0))
    yield signed_in(app.test_client(), issuer)
    server.stop()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(data: bytes, filename: str):
    return {"data": {"image": (io.BytesIO(data), filename)}, "content_type": "multipart/form-data"}


def _predict(client, name: str, data: bytes, how: str = "multipart"):
    url = f"/api/v1/models/{name}:predict"
    if how == "multipart":
        return client.post(url, **_multipart(data, "scan.dcm"))
    if how == "json":
        return client.post(url, json={"image": {"b64": base64.b64encode(data).decode()}})
    return client.post(url, data=data, content_type="application/dicom")


def _v2(client, name: str, data: bytes):
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(data).decode()]}]}
    return client.post(f"/v2/models/{name}/infer", json=body)


def test_a_dicom_mammogram_is_answered_as_the_png_of_its_windowed_pixels(stack):
    pixels = fx.breast(256, 192, seed=5)
    png = _png(linear(pixels, *fx.MG_WINDOWS[0]))        # the standard's LINEAR window, computed here
    expected = _predict(stack, MAMMOGRAPHY, png).json
    assert expected["model"] == MAMMOGRAPHY and 0 <= expected["probability"] <= 1
    # the model tells images apart, so the equalities below say the pixels were the same
    other = _predict(stack, MAMMOGRAPHY, _png(linear(pixels, *fx.MG_WINDOWS[1]))).json
    assert other["probability"] != expected["probability"]
    for syntax in (uid.ExplicitVRLittleEndian, uid.JPEG2000Lossless):
        data = fx.mammogram(pixels, transfer_syntax=syntax)
        for how in ("multipart", "json", "raw"):
            r = _predict(stack, MAMMOGRAPHY, data, how)
            assert r.status_code == 200, (syntax, how, r.json)
            assert r.json == expected, (syntax, how)


def test_monochrome1_and_its_monochrome2_twin_get_the_same_probability(stack):
    pixels = fx.breast(256, 192, seed=6)
    mono2 = _predict(stack, MAMMOGRAPHY, fx.mammogram(pixels)).json
    mono1 = _predict(stack, MAMMOGRAPHY, fx.mammogram_monochrome1_twin(pixels)).json
    assert mono1["probability"] == mono2["probability"] and mono1["label"] == mono2["label"]
    assert mono1 == _predict(stack, MAMMOGRAPHY, _png(linear(pixels, *fx.MG_WINDOWS[0]))).json


def test_a_structured_report_or_another_modality_is_a_clear_422(stack):
    sr = fx.comprehensive_sr()
    r = _predict(stack, MAMMOGRAPHY, sr, "raw")
    assert r.status_code == 422 and r.json["status"] == 422
    assert "Structured Report, not an image" in r.json["error"] and "DICOM image" in r.json["error"]
    v2 = _v2(stack, MAMMOGRAPHY, sr)
    assert v2.status_code == 422 and "Structured Report" in v2.json["error"]
    wrong = _predict(stack, MAMMOGRAPHY, fx.ultrasound(), "json")
    assert wrong.status_code == 422 and "this model reads mammography" in wrong.json["error"]
    page = stack.post(f"/models/{MAMMOGRAPHY}", **_multipart(sr, "report.dcm"))
    assert page.status_code == 422 and "Structured Report" in page.data.decode()


def test_broken_and_oversized_dicom_are_refused_with_their_reason(stack):
    cases = ((fx.header_bomb(), 413, "image too large: 65535x65535"), (fx.deflate_bomb(), 415, "Deflated"),
             (fx.short_pixel_data(), 400, "truncated DICOM pixel data"),
             (fx.traversal_uid(), 400, "invalid SOPInstanceUID"))
    for data, status, reason in cases:
        r = _predict(stack, MAMMOGRAPHY, data, "raw")
        assert r.status_code == status and reason in r.json["error"] and "DICOM" in r.json["error"], r.json
    empty = stack.post(f"/api/v1/models/{MAMMOGRAPHY}:predict", data=b"x", content_type="application/octet-stream")
    assert empty.status_code == 415 and "application/dicom" in empty.json["error"]


def test_oip_v2_bytes_and_the_cohort_compare_take_ultrasound_dicom(stack):
    rgb = fx.sonogram(160, 200, seed=2)
    png, data = _png(rgb), fx.ultrasound(rgb, transfer_syntax=uid.RLELossless)
    expected = _predict(stack, ULTRASOUND[0], png).json["probability"]
    r = _v2(stack, ULTRASOUND[0], data)
    assert r.status_code == 200, r.json
    outputs = {o["name"]: o["data"] for o in r.json["outputs"]}
    assert outputs["probability"][0] == pytest.approx(expected, abs=1e-6)
    compare = stack.post("/api/v1/cohorts/ultrasound/unfrozen:compare", data=data, content_type="application/dicom")
    assert compare.status_code == 200 and [m["model"] for m in compare.json["models"]] == list(ULTRASOUND)
    assert compare.json["models"][0]["probability"] == pytest.approx(expected, abs=1e-6)


def test_the_pages_take_a_dcm_file(stack):
    form = stack.get(f"/models/{ULTRASOUND[0]}").data.decode()
    assert ".dcm" in form and "application/dicom" in form
    page = stack.post(f"/models/{ULTRASOUND[0]}", **_multipart(fx.ultrasound_cine(), "loop.dcm"))
    assert page.status_code == 200 and 'id="result-label"' in page.data.decode()


def test_the_model_server_gets_the_windowed_pixels_and_the_upload_keeps_the_header():
    pixels = fx.breast(seed=7)
    for data in (fx.mammogram(pixels, laterality="R", view="MLO"), fx.mammogram_monochrome1_twin(pixels)):
        upload = uploads.prepare(data, 10 << 20, 40_000_000, 224, "mammography")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(upload.png))), linear(pixels, *fx.MG_WINDOWS[0]))
        assert upload.dicom is not None and "PixelData" not in upload.dicom
        assert upload.dicom.SOPClassUID == fx.MG_FOR_PRESENTATION and upload.dicom.PatientID == "BC-0042"
    assert upload.dicom.PhotometricInterpretation == "MONOCHROME1"
    assert uploads.prepare(_png(fx.sonogram()), 10 << 20, 40_000_000, 224).dicom is None


@dciodvfy.required
def test_accept_application_dicom_answers_a_tid1500_sr_that_files_with_the_image(stack):
    """One model and a cohort (three models and their ensemble): the SR references the image,
    files in its study, holds the probabilities the JSON answer gives, and passes dciodvfy."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    mg = fx.mammogram(fx.breast(256, 192, seed=8), laterality="L", view="CC")
    source = pydicom.dcmread(io.BytesIO(mg), stop_before_pixels=True)
    single = _predict(stack, MAMMOGRAPHY, mg).json
    answer = stack.post(f"/api/v1/models/{MAMMOGRAPHY}:predict", data=mg, content_type="application/dicom",
                        headers={"Accept": "application/dicom"})
    assert answer.status_code == 200 and answer.mimetype == "application/dicom"
    us = fx.ultrasound(fx.sonogram(160, 200, seed=3))
    compared = stack.post("/api/v1/cohorts/ultrasound/unfrozen:compare", data=us, content_type="application/dicom").json
    cohort = stack.post("/api/v1/cohorts/ultrasound/unfrozen:compare", data=us, content_type="application/dicom",
                        headers={"Accept": "application/dicom"})
    assert cohort.status_code == 200
    for body, image, expected in ((answer.data, source, [single["probability"]]),
                                  (cohort.data, pydicom.dcmread(io.BytesIO(us), stop_before_pixels=True),
                                   [m["probability"] for m in compared["models"]]
                                   + [compared["ensemble"]["probability"]])):
        findings = dciodvfy.validate(body)
        assert not findings.errors, findings.describe()
        sr = hd.sr.srread(io.BytesIO(body))
        assert (sr.StudyInstanceUID, sr.PatientID) == (image.StudyInstanceUID, image.PatientID)
        assert sr.SeriesInstanceUID != image.SeriesInstanceUID and sr.VerificationFlag == "UNVERIFIED"
        referenced = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                      for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert referenced == {image.SOPInstanceUID}
        probabilities = [float(m.value) for g in sr.content.get_image_measurement_groups()
                         for m in g.get_measurements(name=codes.DCM.ProbabilityOfCancer)]
        assert probabilities == pytest.approx(expected, abs=1e-6)
    # a PNG has no header to file a report with: a clear 406, not a report about nothing
    refused = stack.post(f"/api/v1/models/{MAMMOGRAPHY}:predict", headers={"Accept": "application/dicom"},
                         **_multipart(_png(linear(fx.breast(64, 64, seed=1), *fx.MG_WINDOWS[0])), "a.png"))
    assert refused.status_code == 406 and "DICOM" in refused.json["error"]


@dciodvfy.required
def test_the_v2_dicom_sr_extension_returns_the_report_as_an_output(stack):
    """OIP v2: the ``dicom_sr`` output, asked for by name, is the same kind of SR (base64 in
    JSON), for one model and for a cohort; asked of a PNG it is the same clear 406."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    us = fx.ultrasound(fx.sonogram(160, 200, seed=4))
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(us).decode()]}
    body = {"inputs": [tensor], "outputs": [{"name": "probability"}, {"name": "dicom_sr"}]}
    assert "bcimaging_dicom_sr" in stack.get("/v2").json["extensions"]
    for url in (f"/v2/models/{ULTRASOUND[0]}/infer", "/v2/cohorts/ultrasound/unfrozen/infer"):
        r = stack.post(url, json=body)
        assert r.status_code == 200, r.json
        outputs = {o["name"]: o["data"] for o in r.json["outputs"]}
        report = base64.b64decode(outputs["dicom_sr"][0])
        findings = dciodvfy.validate(report)
        assert not findings.errors, findings.describe()
        sr = hd.sr.srread(io.BytesIO(report))
        probabilities = [float(m.value) for g in sr.content.get_image_measurement_groups()
                         for m in g.get_measurements(name=codes.DCM.ProbabilityOfCancer)]
        assert probabilities[:len(outputs["probability"])] == pytest.approx(outputs["probability"], abs=1e-5)
    png = {**body, "inputs": [{**body["inputs"][0], "data": [base64.b64encode(_png(fx.sonogram(64, 64))).decode()]}]}
    refused = stack.post(f"/v2/models/{ULTRASOUND[0]}/infer", json=png)
    assert refused.status_code == 406 and "DICOM" in refused.json["error"]


def test_a_non_conformant_value_is_a_422_naming_the_attribute_never_its_value(stack, caplog, capfd):
    """An image whose Patient's Birth Date is no date: its SR cannot be made. The answer names the
    attribute; neither the answer nor any log line nor stderr repeats the value (PHI). The JSON
    answer, which copies nothing from the header, still comes."""
    import logging
    import warnings

    secret = "1961-0X-BRN"                    # not a DA value: YYYYMMDD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # pydicom warns (and logs) when the fixture sets it
        us = fx.ultrasound(PatientBirthDate=secret)
    caplog.set_level(logging.DEBUG)
    caplog.clear()                            # only what the gateway logs from here on
    capfd.readouterr()
    refused = stack.post(f"/api/v1/models/{ULTRASOUND[0]}:predict", data=us, content_type="application/dicom",
                         headers={"Accept": "application/dicom"})
    assert refused.status_code == 422 and "PatientBirthDate is not a conformant DICOM value" in refused.json["error"]
    answered = stack.post(f"/api/v1/models/{ULTRASOUND[0]}:predict", data=us, content_type="application/dicom")
    assert answered.status_code == 200
    out, err = capfd.readouterr()
    for where in (refused.get_data(as_text=True), caplog.text, out, err):
        assert secret not in where and "0X-BRN" not in where


def test_a_codestream_that_disagrees_with_its_header_is_a_422_saying_what_disagreed(stack):
    from tests.test_dicom import _lying_codestream

    bomb = _lying_codestream(fx.ultrasound_jpeg(np.full((64, 64, 3), 90, np.uint8)), 6000, 6000)
    answer = stack.post(f"/api/v1/models/{ULTRASOUND[0]}:predict", data=bomb, content_type="application/dicom")
    assert answer.status_code == 422 and "codestream declares 6000x6000" in answer.json["error"]
