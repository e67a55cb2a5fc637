"""Who may ask, and what is recorded: bearer tokens from a real OpenID provider process on
loopback (tests/oidc.py), roles at every door of the real gateway, the hash-chained access audit,
and per-subject rate limits. Each attack gets a clear status and changes nothing."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import subprocess
import sys
import time

import pytest

from components.core import audit
from components.core.identity import IdentityConfig, TokenVerifier, Unauthorized
from gateway import openapi
from gateway.app import create_app
from serving import history, repository
from serving.server import Server, free_port
from tests.conftest import PHI_KEY, ROOT, ULTRASOUND_UNFROZEN, gateway_config, run_cli, signed_in
from tests.oidc import new_key
from tests.test_extract_dicom import assert_no_phi

NAME = ULTRASOUND_UNFROZEN[0]
PROBES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}


@pytest.fixture(scope="module")
def served(pipeline_outputs, tmp_path_factory, issuer):
    """The ultrasound cohort behind a gateway that trusts ``issuer``, with its audit file."""
    root = tmp_path_factory.mktemp("identity-repo")
    for name in ULTRASOUND_UNFROZEN:
        repository.push(pipeline_outputs[name] / "saved_model", root)
    server = Server(root, port=0, poll_seconds=3600)
    audit_log = tmp_path_factory.mktemp("identity-audit") / "audit.jsonl"
    app = create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}", audit_log=audit_log, deadline_s=20,
                                    rate_limit="5/minute"))
    yield {"app": app, "root": root, "audit": audit_log, "issuer": issuer}
    server.stop()
    app.extensions["access"].log.close()


@pytest.fixture(scope="module")
def png(sample_splits):
    from components.data import records, schema

    return schema.deserialize(next(records.read_records(sample_splits["ultrasound"].parent / "splits" / "test"))).image_png


def _concrete(path: str) -> str:
    return (path.replace("{name}", NAME).replace("{version}", "1").replace("{modality}", "ultrasound")
            .replace("{strategy}", "unfrozen"))


def test_every_endpoint_of_the_openapi_document_answers_401_without_a_token(served):
    """The document is walked, so an endpoint added later cannot be forgotten; only the probes
    answer anonymously. The answer says what is missing and how to authenticate."""
    client = served["app"].test_client()
    doc = openapi.document()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            answer = client.open(_concrete(path), method=method.upper(), json={} if method == "post" else None)
            if path in PROBES:
                assert answer.status_code != 401 and operation["security"] == [], path
                continue
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="bcimaging"')
            assert "no bearer token" in answer.get_json()["error"]
            assert operation["security"] == [{"bearer": []}] and operation["x-roles"]
    for page in ("/", "/models/" + NAME, "/cohorts/ultrasound/unfrozen", "/static/style.css"):
        assert client.get(page).status_code == 401, page


def test_bad_tokens_are_refused_with_the_reason(served):
    issuer, client = served["issuer"], served["app"].test_client()
    stranger = new_key()

    def ask(token: str):
        return client.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"})

    cases = {
        "the token has expired": issuer.token(expires_in=-120),
        "does not verify": issuer.token(key=stranger),                       # forged: the right kid, another key
        "another audience": issuer.token(audience="someone-else"),
        "another issuer": issuer.token(issuer="https://evil.example"),
        "not valid yet": issuer.token(not_before=time.time() + 600),
        "are not accepted": issuer.unsigned(),                               # alg: none
        "are not accepted (RS256": issuer.token(key=b"a-shared-secret-guess-0123456789", algorithm="HS256"),
        "not a JWT": "not-a-token",
    }
    for reason, token in cases.items():
        answer = ask(token)
        assert answer.status_code == 401 and reason in answer.get_json()["error"], (reason, answer.get_json())
    assert client.get("/api/v1/models", headers={"Authorization": "Basic dXNlcjpwdw=="}).status_code == 401
    assert ask(issuer.token()).status_code == 200
    assert ask(issuer.token(kid="ec-1")).status_code == 200                  # ES256 too


def test_an_unknown_key_id_refreshes_the_keys_once_and_a_flood_causes_no_refresh_storm(served):
    issuer = served["issuer"]
    verifier = served["app"].extensions["access"].verifier
    client = served["app"].test_client()
    before = issuer.jwks_fetches
    unknown = issuer.token(kid="nobody-publishes-this", key=new_key())
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get("/api/v1/models", headers={"Authorization": f"Bearer {unknown}"}),
                                range(100)))
    assert {a.status_code for a in answers} == {401}
    assert "key id is not one the issuer publishes" in answers[0].get_json()["error"]
    assert issuer.jwks_fetches - before <= 1, "a refresh per unknown token would be a storm"
    # a rotation: the issuer publishes a new key and signs with it; the first token with it
    # refreshes the keys (once the minimum interval has passed) and is accepted
    verifier._refreshed_at -= verifier.config.min_refresh_s
    new_kid = issuer.rotate()
    assert client.get("/api/v1/models", headers={"Authorization": f"Bearer {issuer.token(kid=new_kid)}"}).status_code == 200
    issuer.retire(new_kid)


def test_roles_decide_what_a_valid_token_may_do(served, png):
    issuer, app = served["issuer"], served["app"]
    image = {"image": {"b64": base64.b64encode(png).decode()}}
    auditor = signed_in(app.test_client(), issuer, ("auditor",), "the-auditor")
    clinician = signed_in(app.test_client(), issuer, ("clinician",), "dr-example")
    operator = signed_in(app.test_client(), issuer, ("operator",), "mlops")
    forbidden = auditor.post(f"/api/v1/models/{NAME}:predict", json=image)
    assert forbidden.status_code == 403 and "needs the clinician role" in forbidden.get_json()["error"]
    assert clinician.post(f"/api/v1/models/{NAME}:predict", json=image).status_code == 200
    assert clinician.get("/metrics").status_code == 403 and operator.get("/metrics").status_code == 200
    assert clinician.get("/api/v1/audit").status_code == 403
    page = operator.get(f"/models/{NAME}").get_data(as_text=True)
    assert 'id="labels"' in page                               # versions and decisions: the operator's
    assert 'id="labels"' not in clinician.get(f"/models/{NAME}").get_data(as_text=True)
    assert operator.post(f"/models/{NAME}", data={}).status_code == 403     # predicting is the clinician's
    # roles under another claim and other names, as a hospital's provider names them
    nested = TokenVerifier(IdentityConfig(issuer.url, issuer.audience, "realm_access.roles",
                                          {"clinician": "radiologist", "operator": "mlops", "auditor": "audit"}))
    who = nested.verify(issuer.token("dr-x", (), realm_access={"roles": ["radiologist", "other"]}))
    assert who.subject == "dr-x" and who.roles == {"clinician"}


def test_the_access_audit_records_who_did_what_and_is_tamper_evident(served, png, tmp_path):
    issuer, app = served["issuer"], served["app"]
    clinician = signed_in(app.test_client(), issuer, ("clinician",), "dr-audited")
    answer = clinician.post("/api/v1/cohorts/ultrasound/unfrozen:compare",
                            json={"image": {"b64": base64.b64encode(png).decode()}}, headers={"X-Request-ID": "req-42"})
    assert answer.status_code == 200 and answer.headers["X-Request-ID"] == "req-42"
    app.test_client().get("/api/v1/models")                                  # a refused request is recorded too
    auditor = signed_in(app.test_client(), issuer, ("auditor",), "the-auditor")
    window = auditor.get("/api/v1/audit", query_string={"since": "2000-01-01T00:00:00+00:00"}).get_json()
    assert window["verified"] is True
    (mine,) = [e for e in window["events"] if e["requestId"] == "req-42"]
    assert mine["subtype"] == "compare" and mine["outcome"] == "0" and mine["outcomeDesc"] == "200"
    assert mine["agent"][0]["who"] == "dr-audited" and mine["agent"][0]["role"] == ["clinician"]
    assert mine["agent"][0]["network"]["address"] == "127.0.0.1" and mine["source"]["observer"] == "gateway"
    assert {e["name"] for e in mine["entity"] if e["what"]["display"] == "model"} == set(ULTRASOUND_UNFROZEN)
    (instance,) = [e["what"]["pseudonym"] for e in mine["entity"] if e["what"]["display"] == "instance"]
    assert len(instance) == 16
    assert any(e["outcomeDesc"] == "401" and e["agent"][0]["who"] == "unknown" for e in window["events"])
    assert auditor.get("/api/v1/audit", query_string={"since": "yesterday"}).status_code == 400
    # the command line verifies the chain; one edited line and one deleted line are each found
    app.extensions["access"].log.sync()
    done = subprocess.run([sys.executable, "-m", "gateway.audit", "verify", str(served["audit"])], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "whole" in done.stdout
    lines = served["audit"].read_bytes().splitlines(keepends=True)
    mine = next(i for i, line in enumerate(lines) if b'"req-42"' in line)       # 0-based; a later line follows it
    assert mine + 1 < len(lines)
    edited, deleted = tmp_path / "edited.jsonl", tmp_path / "deleted.jsonl"
    edited.write_bytes(b"".join(lines[:mine] + [lines[mine].replace(b"dr-audited", b"dr-someone")] + lines[mine + 1:]))
    deleted.write_bytes(b"".join(lines[:mine] + lines[mine + 1:]))
    # an edit breaks the chain at the line after it; a deletion at the line that now takes its place
    for broken, line in ((edited, mine + 2), (deleted, mine + 1)):
        done = subprocess.run([sys.executable, "-m", "gateway.audit", "verify", str(broken)], cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 1 and f"BROKEN at line {line}" in done.stdout, done.stdout
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-1]))
    audit.head_path(cut).write_text(audit.head_path(served["audit"]).read_text())
    assert not audit.verify(cut).ok and "missing" in audit.verify(cut).reason


def test_a_subject_beyond_its_rate_gets_429_with_retry_after_and_it_is_counted(served, png):
    issuer, app = served["issuer"], served["app"]
    busy = signed_in(app.test_client(), issuer, ("clinician", "operator"), "dr-busy")
    other = signed_in(app.test_client(), issuer, ("clinician",), "dr-other")
    body = {"image": {"b64": base64.b64encode(png).decode()}}
    statuses = [busy.post(f"/api/v1/models/{NAME}:predict", json=body).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    limited = busy.post(f"/api/v1/models/{NAME}:predict", json=body)
    assert int(limited.headers["Retry-After"]) > 0 and "too many requests" in limited.get_json()["error"]
    assert other.post(f"/api/v1/models/{NAME}:predict", json=body).status_code == 200     # per subject
    metrics = busy.get("/metrics").get_data(as_text=True)
    assert 'gateway_rate_limited_total{endpoint="api.predict"} 3.0' in metrics
    assert "dr-busy" not in metrics                              # no identity in a metric label


def test_auth_none_is_refused_off_loopback_and_required_explicitly(tmp_path):
    done = run_cli("gateway", "--model-repo", str(tmp_path), "--auth", "none", "--host", "0.0.0.0", check=False)
    assert done.returncode == 2 and "binds loopback only" in done.stderr
    done = run_cli("gateway", "--model-repo", str(tmp_path), "--port", str(free_port()), check=False)
    assert done.returncode == 2 and "--oidc-issuer" in done.stderr
    from gateway.app import GatewayConfig

    with pytest.raises(ValueError, match="identity provider"):
        create_app(GatewayConfig(tmp_path))                     # no default: never open by omission


def test_decisions_are_chained_and_a_command_line_decision_says_it_is_not_verified(pipeline_outputs, tmp_path):
    root = tmp_path / "repo"
    repository.push(pipeline_outputs[NAME] / "saved_model", root)
    decisions = history.read(root, NAME)
    assert decisions and all(d["verified"] is False for d in decisions)
    assert audit.verify(history.path(root, NAME)).ok
    lines = history.path(root, NAME).read_text().splitlines(keepends=True)
    assert len(lines) == 2                                       # verified, then stable
    history.path(root, NAME).write_text(lines[0].replace('"reason": "', '"reason": "edited: ') + lines[1])
    verdict = audit.verify(history.path(root, NAME))
    assert not verdict.ok and verdict.broken_line == 2


def test_the_verifier_never_fetches_more_than_once_per_interval_even_for_many_kids(issuer):
    verifier = TokenVerifier(IdentityConfig(issuer.url, issuer.audience, min_refresh_s=3600))
    verifier.verify(issuer.token())
    before = issuer.jwks_fetches
    for i in range(50):
        with pytest.raises(Unauthorized):
            verifier.verify(issuer.token(kid=f"made-up-{i}", key=new_key("EC")))
    assert issuer.jwks_fetches == before


def test_phi_never_reaches_the_audit_file(served, tmp_path):
    """A DICOM upload's patient name, id and UIDs are absent from the audit; its study and
    instance appear as keyed pseudonyms."""
    from tests import dicom_fixtures

    issuer, app = served["issuer"], served["app"]
    import pydicom

    sonogram = dicom_fixtures.ultrasound()
    header = pydicom.dcmread(io.BytesIO(sonogram), stop_before_pixels=True)
    clinician = signed_in(app.test_client(), issuer)
    assert clinician.post(f"/api/v1/models/{NAME}:predict", data=sonogram, content_type="application/dicom").status_code == 200
    app.extensions["access"].log.sync()
    text = served["audit"].read_text()
    assert_no_phi({str(header.PatientName), str(header.PatientID), str(header.StudyInstanceUID),
                   str(header.SOPInstanceUID), str(header.get("PatientBirthDate", ""))}, served["audit"].parent)
    from components.core import phi
    assert phi.pseudonym(PHI_KEY, "study", str(header.StudyInstanceUID)) in text
    assert json.loads(text.splitlines()[-1])["subtype"] == "predict"
