"""Per-site operating points, end to end on real parts: site profiles accepted into the model
repository (validated, recorded in the hash-chained history, revocable), and the real gateway
(the embedded model server over gRPC, conftest's trained models) answering at a site's
operating point when asked for that site only, on /api/v1, OIP v2, the pages and the DICOM SR."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from components.core import audit, cli
from gateway.app import create_app
from serving import history, repository, sites
from serving.__main__ import _run as serving_run, build_parser as serving_parser
from serving.server import Server
from tests import dciodvfy, dicom_fixtures
from tests.conftest import ULTRASOUND_UNFROZEN, export_variant, gateway_config, signed_in

NAME = "ultrasound-resnet50-unfrozen"
OTHER = "ultrasound-vgg16-unfrozen"
TEMPERATURE = 2.0


def write_profile(folder: Path, site: str, model: str, version: int, temperature: float, threshold: float, /,
                  **changes) -> Path:
    """A site profile as site acceptance writes it, beside its acceptance report."""
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / f"{site}-{model}-{version}-acceptance.json"
    report.write_text(json.dumps({"site": site, "model": model, "version": version, "verdict": "accepted"}))
    profile = {"site": site, "model": model, "version": version, "temperature": temperature, "threshold": threshold,
               "target": {"sensitivity": 0.9}, "acceptance": report.name,
               "acceptance_sha256": hashlib.sha256(report.read_bytes()).hexdigest(), **changes}
    path = folder / f"{site}-{model}-{version}-profile.json"
    path.write_text(json.dumps(profile))
    return path


def serving_cli(*argv: str) -> int:
    return cli.main(serving_parser(), serving_run, list(argv))


def scaled(probability: float, temperature: float) -> float:
    return 1 / (1 + math.exp(-math.log(probability / (1 - probability)) / temperature))


@pytest.fixture(scope="module")
def stack(pipeline_outputs, tmp_path_factory, issuer):
    """The ultrasound cohort served (version 1 of each, stable), and a second, unlabelled
    version of NAME in the repository (a profile may name it; version 1 answers)."""
    root = tmp_path_factory.mktemp("sites-repo")
    for name in ULTRASOUND_UNFROZEN:
        repository.push(pipeline_outputs[name] / "saved_model", root)
    variant = export_variant(pipeline_outputs[NAME] / "saved_model", tmp_path_factory.mktemp("v2") / "export", "v2")
    assert repository.push(variant, root).version == 2
    server = Server(root, port=0, poll_seconds=3600)
    app = create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}", deadline_s=20.0, repository_refresh_s=0))
    yield {"root": root, "client": signed_in(app.test_client(), issuer, ("clinician", "operator")),
           "profiles": tmp_path_factory.mktemp("profiles")}
    server.stop()


@pytest.fixture(scope="module")
def png(sample_splits):
    from components.data import records, schema

    return schema.deserialize(next(iter(records.read_records(
        sample_splits["ultrasound"].parent / "splits" / "test")))).image_png


def _predict(client, png: bytes, site: str | None = None, name: str = NAME):
    query = f"?site={site}" if site is not None else ""
    return client.post(f"/api/v1/models/{name}:predict{query}", data={"image": (io.BytesIO(png), "scan.png")},
                       content_type="multipart/form-data")


def _compare(client, png: bytes, site: str | None = None):
    query = f"?site={site}" if site is not None else ""
    return client.post(f"/api/v1/cohorts/ultrasound/unfrozen:compare{query}",
                       data={"image": (io.BytesIO(png), "scan.png")}, content_type="multipart/form-data")


def _v2(client, path: str, png: bytes, site: str | None):
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(png).decode()]}]}
    if site is not None:
        body["parameters"] = {"site": site}
    return client.post(path, json=body)


def _flipping_profile(stack, own: dict, site: str) -> Path:
    """A profile for NAME version 1 whose threshold turns the model's own label over."""
    p = scaled(own["probability"], TEMPERATURE)
    threshold = (p + 1) / 2 if own["label"] == 1 else p / 2
    return write_profile(stack["profiles"], site, NAME, 1, TEMPERATURE, threshold)


def test_a_profile_is_validated_before_anything_is_recorded(stack):
    root, folder = stack["root"], stack["profiles"] / "invalid"
    before = history.read(root, OTHER)
    bad = {"another model's": ({"model": NAME}, "not 'ultrasound-vgg16-unfrozen'"),
           "a version not in the repository": ({"version": 7}, "version 7 is not a version"),
           "a threshold of 1": ({"threshold": 1.0}, "threshold 1.0 must be"),
           "a temperature of 0": ({"temperature": 0}, "temperature 0 must be"),
           "a site name that is no slug": ({"site": "North Hospital"}, "is not a site name"),
           "no evidence hash": ({"acceptance_sha256": "abc"}, "lowercase hex SHA-256")}
    for why, (changes, message) in bad.items():
        path = write_profile(folder, "west", OTHER, 1, 1.5, 0.4, **changes)
        with pytest.raises(ValueError, match=message):
            sites.accept(root, OTHER, path, "should be refused")
    tampered = write_profile(folder, "west", OTHER, 1, 1.5, 0.4)
    (tampered.parent / json.loads(tampered.read_text())["acceptance"]).write_text('{"verdict": "edited"}')
    with pytest.raises(ValueError, match="does not hash to the profile's acceptance_sha256"):
        sites.accept(root, OTHER, tampered, "edited after its acceptance")
    assert serving_cli("site-revoke", OTHER, "west", "--model-repo", str(root), "--reason", "never accepted") == 2
    assert history.read(root, OTHER) == before and sites.current(root, OTHER) == {}


def test_a_site_profile_changes_that_sites_answers_only_is_recorded_and_rolls_back(stack, png, capsys):
    client, root = stack["client"], stack["root"]
    own = _predict(client, png).json
    assert own["operating_point"] == {"site": None, "version": 1, "temperature": 1.0, "threshold": own["threshold"],
                                      "acceptance_sha256": None,
                                      "reason": "no site asked: the model's own operating point"}
    # site north: NAME's answer turned over; site south: a profile of another model only
    north = _flipping_profile(stack, own, "north")
    assert serving_cli("site-accept", NAME, "--profile", str(north), "--model-repo", str(root),
                       "--reason", "north's acceptance passed its floors") == 0
    south = write_profile(stack["profiles"], "south", OTHER, 1, 1.5, 0.3)
    assert serving_cli("site-accept", OTHER, "--profile", str(south), "--model-repo", str(root),
                       "--reason", "south's acceptance passed") == 0
    profile = json.loads(north.read_text())
    assert serving_cli("labels", NAME, "--model-repo", str(root)) == 0
    listed = capsys.readouterr().out
    assert f"site north: version 1, temperature 2, threshold {profile['threshold']:g}" in listed
    assert "site-accept north" in listed

    at_north = _predict(client, png, "north").json
    assert at_north["label"] == 1 - own["label"] and at_north["version"] == 1
    assert at_north["probability"] == pytest.approx(scaled(own["probability"], TEMPERATURE), abs=1e-5)
    assert at_north["threshold"] == pytest.approx(profile["threshold"], abs=1e-6)
    assert at_north["operating_point"] == {
        "site": "north", "version": 1, "temperature": TEMPERATURE, "threshold": profile["threshold"],
        "acceptance_sha256": profile["acceptance_sha256"], "reason": "site north's accepted profile for version 1"}
    for site in (None, "south"):               # no site, and a site with no profile of this model: its own
        answer = _predict(client, png, site).json
        assert {k: answer[k] for k in ("probability", "label", "threshold")} == \
            {k: own[k] for k in ("probability", "label", "threshold")}
        assert answer["operating_point"]["site"] is None
    assert "no profile of ultrasound-resnet50-unfrozen is in effect for site south" in \
        _predict(client, png, "south").json["operating_point"]["reason"]

    # compare: the one member with a north profile answers at it; the ensemble steps aside
    compared = _compare(client, png, "north").json
    points = {m["model"]: m["operating_point"] for m in compared["models"]}
    assert points[NAME]["site"] == "north" and points[OTHER]["site"] is None
    assert compared["ensemble"]["available"] is False and "site north" in compared["ensemble"]["reason"]
    plain = _compare(client, png).json
    assert plain["ensemble"]["available"] and plain["ensemble"]["operating_point"]["site"] is None

    # OIP v2 says the same as the JSON API, for one model and for the cohort
    v2 = _v2(client, f"/v2/models/{NAME}/infer", png, "north").json
    outputs = {o["name"]: o["data"][0] for o in v2["outputs"]}
    assert outputs["label"] == at_north["label"]
    assert outputs["probability"] == pytest.approx(at_north["probability"], abs=1e-5)
    assert outputs["threshold"] == pytest.approx(at_north["threshold"], abs=1e-6)
    assert v2["parameters"] == {f"operating_point_{k}": v for k, v in at_north["operating_point"].items()}
    assert _v2(client, f"/v2/models/{NAME}/infer", png, None).json["parameters"]["operating_point_reason"] \
        == own["operating_point"]["reason"]
    cohort = _v2(client, "/v2/cohorts/ultrasound/unfrozen/infer", png, "north").json
    rows = {o["name"]: o["data"] for o in cohort["outputs"]}
    assert [json.loads(p) for p in rows["operating_point"]] == [m["operating_point"] for m in compared["models"]]
    assert rows["label"] == [m["label"] for m in compared["models"]]
    assert cohort["parameters"]["site"] == "north" and "ensemble_unavailable" in cohort["parameters"]

    # the pages: a site field, and the operating point under the result
    page = client.get(f"/models/{NAME}").data.decode()
    assert '<option value="north">north</option>' in page and "Site operating points in effect" in page
    page = client.post(f"/models/{NAME}", data={"image": (io.BytesIO(png), "scan.png"), "site": "north"},
                       content_type="multipart/form-data").data.decode()
    assert 'id="operating-point"' in page and "site <strong>north</strong>" in page
    assert '<option value="north" selected>' in page

    # recorded: the decision and its evidence, in the chained history
    accepted = [r for r in history.read(root, NAME) if r["action"] == "site-accept"]
    assert [(r["label"], r["to"], r["evidence"]["acceptance_sha256"]) for r in accepted] == \
        [("north", 1, profile["acceptance_sha256"])]
    assert accepted[0]["verified"] is False and accepted[0]["evidence"]["acceptance_report_checked"] is True
    assert json.loads(sites.path(root, NAME).read_text()) == sites.replay(history.read(root, NAME))

    # rolled back: north answers at the model's own again, and still is a known site
    assert serving_cli("site-revoke", NAME, "north", "--model-repo", str(root), "--reason", "new scanner") == 0
    after = _predict(client, png, "north").json
    assert after["label"] == own["label"] and after["probability"] == own["probability"]
    assert after["operating_point"]["site"] is None and "site north" in after["operating_point"]["reason"]
    last = history.read(root, NAME)[-1]
    assert (last["action"], last["label"], last["from"], last["evidence"]["acceptance_sha256"]) == \
        ("site-revoke", "north", 1, profile["acceptance_sha256"])
    assert audit.verify(history.path(root, NAME)).ok and audit.verify(history.path(root, OTHER)).ok
    assert sites.current(root, NAME) == {} and sites.known(root, NAME) == {"north"}


def test_a_profile_for_another_version_is_not_applied_and_the_answer_says_so(stack, png):
    client = stack["client"]
    own = _predict(client, png).json
    east = write_profile(stack["profiles"], "east", NAME, 2, 3.0, 0.01)      # version 2: pushed, not serving
    sites.accept(stack["root"], NAME, east, "east accepted the candidate")
    answer = _predict(client, png, "east").json
    assert answer["version"] == 1 and answer["label"] == own["label"] and answer["probability"] == own["probability"]
    assert answer["operating_point"] == {**own["operating_point"], "reason": (
        "site east's profile is for version 2, and version 1 answered (not accepted at that site): "
        "the model's own operating point")}


def test_an_unknown_site_is_a_400_naming_the_known_ones(stack, png):
    client = stack["client"]
    sites.accept(stack["root"], OTHER, write_profile(stack["profiles"], "known-site", OTHER, 1, 1.2, 0.5), "known")
    for site in ("nowhere", "North!", "x" * 40):
        answer = _predict(client, png, site)
        assert answer.status_code == 400 and "unknown site" in answer.json["error"]
        assert "known-site" in answer.json["error"]
    assert _compare(client, png, "nowhere").status_code == 400
    refused = _v2(client, f"/v2/models/{NAME}/infer", png, "nowhere")
    assert refused.status_code == 400 and "known-site" in refused.json["error"]
    assert _v2(client, "/v2/cohorts/ultrasound/unfrozen/infer", png, "nowhere").status_code == 400
    page = client.post(f"/cohorts/ultrasound/unfrozen", data={"image": (io.BytesIO(png), "scan.png"),
                                                              "site": "nowhere"}, content_type="multipart/form-data")
    assert page.status_code == 400 and "unknown site" in page.data.decode()


@dciodvfy.required
def test_the_sr_names_the_operating_point_and_stays_valid(stack):
    client, root = stack["client"], stack["root"]
    sites.accept(root, OTHER, write_profile(stack["profiles"], "sr-site", OTHER, 1, 1.7, 0.35), "for the SR")
    image = dicom_fixtures.ultrasound()
    answer = client.post("/api/v1/cohorts/ultrasound/unfrozen:compare?site=sr-site", data=image,
                         content_type="application/dicom", headers={"Accept": "application/dicom"})
    assert answer.status_code == 200, answer.data[:300]
    findings = dciodvfy.validate(answer.data)
    assert not findings.errors, findings.describe()
    parameters = algorithm_parameters(pydicom.dcmread(io.BytesIO(answer.data)))
    profile = sites.current(root, OTHER)["sr-site"]
    assert {"operating_point=site sr-site", "decision_threshold=0.35", "temperature=1.7",
            f"site_acceptance_sha256={profile['acceptance_sha256']}"} <= set(parameters[OTHER])
    assert {"operating_point=model own", "temperature=1"} <= set(parameters["ultrasound-densenet121-unfrozen"])
    assert "ultrasound-ensemble-unfrozen" not in parameters         # no ensemble beside a site's members


def algorithm_parameters(sr: pydicom.Dataset) -> dict[str, list[str]]:
    """model name -> its TID 4019 Algorithm Parameters, from each measurement group."""
    out = {}
    for group in hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups():
        items = {}
        for item in group[0].ContentSequence:
            items.setdefault(item.name.meaning, []).append(getattr(item, "value", None))
        out[items["Algorithm Name"][0]] = items["Algorithm Parameters"]
    return out
