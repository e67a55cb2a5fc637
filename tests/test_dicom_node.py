"""The DICOM node (dicom_node): what it takes by C-STORE and STOW-RS, what it refuses,
how it groups a study, and the round trip through a real Orthanc and the real gateway: the
PACS sends an image, the node asks the gateway, and the PACS holds the report. Every hop to and
from Orthanc is encrypted (DICOM TLS, HTTPS) with certificates from a test CA (tests/tlsca.py)."""
from __future__ import annotations

import builtins
import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from components.core import audit
from components.core.identity import IdentityConfig, TokenVerifier
from components.core.tls import TLSFiles
from gateway import dicom_sr
from dicom_node import Node, NodeConfig, admission, pacs
from dicom_node.__main__ import build_parser, config as node_config, main as node_main
from dicom_node.doors import Doors
from dicom_node.inbox import tag
from dicom_node import sites as node_sites
from dicom_node.report import Reporter, Retry, Transient, referenced_instances
from dicom_node.stow import split_multipart
from tests import dciodvfy, dicom_fixtures, orthanc
from tests.oidc import new_key
from tests.tlsca import CertificateAuthority, Pair

NODE_AET = "NODE_AET"
NODE_KEY = b"a-test-phi-key-of-32-random-bytes"        # the PHI key of the nodes in this process
IMAGE_CLASSES = admission.STORAGE_CLASSES
SENDERS = {"TEST_SCU": frozenset(), orthanc.AE_TITLE: frozenset({"127.0.0.1"})}
TRUSTED: dict = {}          # this module's identity provider (tests/oidc.py), set by _trusted


@pytest.fixture(autouse=True)
def _trusted(issuer, tmp_path):
    """The nodes of these tests check STOW-RS tokens from ``issuer`` and keep an audit."""
    TRUSTED.update(issuer=issuer, audit=tmp_path / "node-audit.jsonl")
    yield
    TRUSTED.clear()


# -- helpers -----------------------------------------------------------------------------------

@contextmanager
def running_node(report=None, senders=SENDERS, **options):
    """The node in this process on free loopback ports; ``report`` gets each quiet batch. It
    admits ``senders`` by C-STORE and STOW-RS with a token from this module's issuer."""
    issuer = TRUSTED["issuer"]
    doors = Doors(senders, TokenVerifier(IdentityConfig(issuer.url, issuer.audience)),
                  audit.ChainedLog(TRUSTED["audit"]), NODE_KEY)
    settings = dict(ae_title=NODE_AET, gateway="http://127.0.0.1:9", store=None, doors=doors, credentials=None,
                    dicom_port=0, http_port=0, quiet_s=30.0, retry=Retry(3, 0.0, sleep=lambda s: None))
    node = Node(NodeConfig(**{**settings, **options}), report=report or (lambda batch: None)).start()
    try:
        yield node
    finally:
        node.stop()
        doors.log.close()


def scu(called: str = NODE_AET, calling: str = "TEST_SCU") -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    for sop_class in IMAGE_CLASSES:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    return ae


def c_store(port: int, *instances: bytes, called: str = NODE_AET, tls_args=None) -> list[int]:
    """The C-STORE status of each instance, sent over one association."""
    assoc = scu().associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    assert assoc.is_established, "association refused"
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status) for data in instances]
    finally:
        assoc.release()


def stow(port: int, *parts: bytes, content_type: str = 'multipart/related; type="application/dicom"',
         roles=("clinician",), token: str | None = None, ca: Path | None = None):
    """A STOW-RS request with a token carrying ``roles`` (``token`` "": none at all); over HTTPS
    trusting ``ca`` when given."""
    boundary = "node-test-boundary-7f3a"
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p) for p in parts)
    body += b"--%s--\r\n" % boundary.encode()
    token = TRUSTED["issuer"].token("pacs-router", roles) if token is None else token
    url = f"https://localhost:{port}/studies" if ca else f"http://127.0.0.1:{port}/studies"
    return requests.post(url, data=body, timeout=30, verify=str(ca) if ca else True,
                         headers={"Content-Type": f"{content_type}; boundary={boundary}",
                                  **({"Authorization": f"Bearer {token}"} if token else {})})


@pytest.fixture
def pki(tmp_path):
    """The hospital's CA, the node's certificate from it, and a sender's."""
    ca = CertificateAuthority(tmp_path / "pki", "hospital CA")
    return ca, ca.certify("node"), ca.certify("sender", server=False)


def tls_to_node(ca: Path, client: Pair | None) -> tuple:
    """pynetdicom's ``tls_args``: trusting ``ca`` for the node, presenting ``client`` (None: no certificate)."""
    files = TLSFiles(client.cert, client.key, ca) if client else TLSFiles(ca=ca)
    return files.client_context(), "localhost"


def mammogram(study: str | None = None, view: str = "CC", **attributes) -> bytes:
    return dicom_fixtures.mammogram(view=view, **({"StudyInstanceUID": study} if study else {}), **attributes)


def wait_for(condition, timeout_s: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def model_result(probability: float = 0.25) -> dicom_sr.ModelResult:
    return dicom_sr.ModelResult("mammography-resnet50-progressive", 1, "ab" * 32, probability, 0.5, probability >= 0.5)


@contextmanager
def fake_gateway(answer):
    """A stand-in for the gateway's compare endpoint: ``answer(request, header)`` gives the
    response (the default a real SR from gateway.dicom_sr); every request is recorded."""
    seen = []

    @Request.application
    def app(request):
        header = pydicom.dcmread(io.BytesIO(request.get_data()), stop_before_pixels=True)
        seen.append((request.path, request.headers.get("Accept"), header.SOPInstanceUID))
        return answer(request, header)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()


def sr_answer(request, header):
    sr = dicom_sr.build_sr(header, [model_result()], manufacturer="bcimaging", software_version="test")
    return Response(dicom_sr.to_bytes(sr), 200, content_type="application/dicom")


class RecordingStore:
    """A PACS in a list; ``fail_first`` puts fail with a Transient first."""

    def __init__(self, fail_first: int = 0):
        self.puts, self.sources, self.fail_first = [], [], fail_first

    def put(self, datasets):
        self.puts.append([str(ds.SOPInstanceUID) for ds in datasets])
        self.sources.append(set().union(*(referenced_instances(ds) for ds in datasets)))
        if len(self.puts) <= self.fail_first:
            raise Transient("the PACS is restarting")


# -- the node alone: its doors -----------------------------------------------------------------

def test_an_association_calling_another_ae_title_is_rejected():
    with running_node() as node:
        wrong = scu().associate("127.0.0.1", node.dicom_port, ae_title="SOMEONE_ELSE")
        assert wrong.is_rejected and not wrong.is_established
        right = scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
        assert right.is_established
        right.release()


def test_a_c_store_from_an_unknown_calling_ae_is_rejected_at_association():
    with running_node() as node:
        stranger = scu(calling="STRANGER").associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
        assert stranger.is_rejected and not stranger.is_established
        # rejected permanently by the service user: calling AE title not recognised (PS3.8 9.3.4)
        assert (stranger.acceptor.primitive.result, stranger.acceptor.primitive.result_source,
                stranger.acceptor.primitive.diagnostic) == (0x01, 0x01, 0x03)
        assert node.inbox.status()["instances_waiting"] == 0
    # a known title from an address not its own gets no further than an aborted association
    with running_node(senders={"TEST_SCU": frozenset({"192.0.2.7"})}) as node:
        elsewhere = scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
        time.sleep(0.5)
        assert not elsewhere.is_established or elsewhere.is_aborted
    events = list(audit.read(TRUSTED["audit"]))
    assert [e["agent"][0]["who"] for e in events if e["outcomeDesc"] == "403"] == ["STRANGER", "TEST_SCU"]
    assert audit.verify(TRUSTED["audit"]).ok


def test_stow_rs_needs_a_token_with_the_clinician_role():
    image = mammogram()
    with running_node() as node:
        missing = stow(node.http_port, image, token="")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "no bearer token" in missing.json()["error"]
        forged = TRUSTED["issuer"].token("pacs-router", ("clinician",), key=new_key())
        assert stow(node.http_port, image, token=forged).status_code == 401
        assert stow(node.http_port, image, roles=("auditor",)).status_code == 403
        assert node.inbox.status()["instances_waiting"] == 0
        assert stow(node.http_port, image).status_code == 200
        assert node.inbox.status()["instances_waiting"] == 1


def test_stow_rs_over_https_takes_an_image_and_plain_http_gets_no_answer(pki):
    ca, node_pair, _ = pki
    with running_node(http_tls=TLSFiles(node_pair.cert, node_pair.key)) as node:
        with pytest.raises(requests.ConnectionError):
            stow(node.http_port, mammogram())                       # plaintext to the HTTPS door
        assert node.inbox.status()["instances_waiting"] == 0
        assert stow(node.http_port, mammogram(), ca=ca.cert).status_code == 200
        assert node.inbox.status()["instances_waiting"] == 1


def test_more_associations_than_the_bound_are_rejected():
    with running_node(max_associations=2) as node:
        held = [scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET) for _ in range(2)]
        try:
            assert all(a.is_established for a in held)
            third = scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
            assert third.is_rejected
            # the rejection is "transient, local limit exceeded" (PS3.8 9.3.4): try again later
            assert (third.acceptor.primitive.result, third.acceptor.primitive.result_source,
                    third.acceptor.primitive.diagnostic) == (0x02, 0x03, 0x02)
        finally:
            for a in held:
                a.release()
        # a released association's thread ends a moment after the release: until then the node
        # still counts it and answers "transient", as the standard lets it; a peer tries again
        deadline = time.monotonic() + 5.0
        while True:
            again = scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
            if again.is_established or not again.is_rejected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert again.is_established
        again.release()


def test_the_byte_budget_refuses_with_out_of_resources_and_frees_once_reported():
    first, second, third = mammogram(), mammogram(), mammogram()
    batches = []
    with running_node(report=batches.append, budget_bytes=int(len(first) * 1.5), quiet_s=1.0) as node:
        assert c_store(node.dicom_port, first, second) == [admission.SUCCESS, admission.OUT_OF_RESOURCES]
        refused = stow(node.http_port, third)
        assert refused.status_code == 409
        (failure,) = pydicom.Dataset.from_json(refused.json()).FailedSOPSequence
        assert failure.FailureReason == admission.OUT_OF_RESOURCES
        assert failure.ReferencedSOPInstanceUID == pydicom.dcmread(io.BytesIO(third)).SOPInstanceUID
        wait_for(lambda: batches and node.inbox.status()["held_bytes"] == 0, what="the first study reported")
        assert c_store(node.dicom_port, second) == [admission.SUCCESS]      # the budget is free again


def test_stow_rs_takes_a_multipart_body_and_lists_what_it_refused():
    study = generate_uid()
    images = [mammogram(study, "CC"), mammogram(study, "MLO")]
    with running_node() as node:
        # dicomweb-client, as a PACS or a script would send them, with its bearer token
        signed = requests.Session()
        signed.headers.update(TRUSTED["issuer"].headers(subject="pacs-router"))
        client = DICOMwebClient(f"http://127.0.0.1:{node.http_port}", session=signed)
        response = client.store_instances([pydicom.dcmread(io.BytesIO(d)) for d in images])
        taken = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
        assert taken == {str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in images}
        assert node.inbox.status()["instances_waiting"] == 2
        mixed = stow(node.http_port, mammogram(), dicom_fixtures.comprehensive_sr(), b"not dicom")
        assert mixed.status_code == 202
        answer = pydicom.Dataset.from_json(mixed.json())
        assert len(answer.ReferencedSOPSequence) == 1
        assert sorted(f.FailureReason for f in answer.FailedSOPSequence) == [admission.SOP_CLASS_NOT_SUPPORTED,
                                                                             admission.CANNOT_UNDERSTAND]
        metadata = stow(node.http_port, b"{}", content_type='multipart/related; type="application/dicom+json"')
        assert metadata.status_code == 415
        assert requests.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=5).json()["instances_waiting"] == 3


def test_a_multipart_body_is_split_exactly_at_its_boundaries():
    content = b"\r\n--not-the-boundary\r\n\x00\xff\r\n"            # binary, with lines that look like ones
    body = b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\n" + content + b"\r\n--b1\r\n\r\nx\r\n--b1--\r\n"
    assert split_multipart(body, "b1") == [("application/dicom", content), ("application/dicom", b"x")]


def test_the_quiet_period_groups_the_instances_of_a_study_into_one_batch():
    study = generate_uid()
    batches = []
    with running_node(report=batches.append, quiet_s=1.5) as node:
        assert c_store(node.dicom_port, mammogram(study, "CC")) == [admission.SUCCESS]
        time.sleep(0.8)                                         # within the quiet period: the same batch
        assert stow(node.http_port, mammogram(study, "MLO")).status_code == 200
        assert c_store(node.dicom_port, mammogram()) == [admission.SUCCESS]          # another study
        time.sleep(0.9)
        assert batches == [], "a study was handed on before it had been quiet for 1.5 s"
        wait_for(lambda: len(batches) == 2, what="two batches")
    by_study = {b.study_uid: b for b in batches}
    assert [i.sop_class_uid for i in by_study[study].instances] == [dicom_fixtures.MG_FOR_PRESENTATION] * 2
    assert sum(len(b.instances) for b in batches) == 3 and all(b.instances[0].modality == "mammography" for b in batches)


def test_a_uid_holding_dot_dot_is_refused_and_the_node_writes_no_file(monkeypatch):
    """The node keeps instances in memory only; a UID never becomes a path (it is not even taken)."""
    written, real_open, real_os_open = [], builtins.open, os.open

    def watched_open(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+"):
            written.append(file)
        return real_open(file, mode, *args, **kwargs)

    def watched_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            written.append(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(os, "open", watched_os_open)
    evil = dicom_fixtures.traversal_uid()
    with running_node() as node:
        refused = stow(node.http_port, evil)
        assert refused.status_code == 409
        (failure,) = pydicom.Dataset.from_json(refused.json()).FailedSOPSequence
        assert failure.FailureReason == admission.DOES_NOT_MATCH_SOP_CLASS
        assert "ReferencedSOPInstanceUID" not in failure        # no "../" echoed back either
        assert c_store(node.dicom_port, mammogram()) == [admission.SUCCESS]
        assert node.inbox.status()["instances_waiting"] == 1
    with pytest.raises(admission.Refused, match="invalid SOPInstanceUID"):
        admission.admit(evil)
    # the one file the node writes is its access audit (and that file's head)
    audit_file = TRUSTED["audit"]
    assert [w for w in written if isinstance(w, int) or Path(w).parent != audit_file.parent
            or not Path(w).name.lstrip(".").startswith(audit_file.name)] == []


# -- encryption: DICOM TLS at the door, TLS to the PACS, keyed pseudonyms in the log ----------

def test_the_tls_door_refuses_plaintext_and_a_silent_peer_does_not_hold_it_shut(pki):
    ca, node_pair, sender = pki
    with running_node(dicom_tls=TLSFiles(node_pair.cert, node_pair.key, ca.cert)) as node:
        silent = socket.create_connection(("127.0.0.1", node.dicom_port))        # connects, never says hello
        try:
            plain = scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET)
            assert not plain.is_established, "a plaintext association reached the TLS door"
            started = time.monotonic()
            assert c_store(node.dicom_port, mammogram(), tls_args=tls_to_node(ca.cert, sender)) == [admission.SUCCESS]
            assert time.monotonic() - started < 5, "the TLS handshake waited behind the silent peer"
        finally:
            silent.close()
        assert node.inbox.status()["instances_waiting"] == 1
    refused = [e for e in audit.read(TRUSTED["audit"]) if e.get("detail", "").startswith("TLS handshake failed")]
    assert refused and {e["outcomeDesc"] for e in refused} == {"403"}


def test_a_sender_without_a_certificate_from_the_hospital_ca_is_refused(pki, tmp_path):
    ca, node_pair, sender = pki
    stranger = CertificateAuthority(tmp_path / "elsewhere", "another CA").certify("sender", server=False)
    with running_node(dicom_tls=TLSFiles(node_pair.cert, node_pair.key, ca.cert)) as node:
        for client in (stranger, None):         # another authority's certificate; none at all
            assoc = scu().associate("127.0.0.1", node.dicom_port, ae_title=NODE_AET,
                                    tls_args=tls_to_node(ca.cert, client))
            assert not assoc.is_established, f"associated with {'a foreign' if client else 'no'} certificate"
        assert node.inbox.status()["instances_waiting"] == 0
        assert c_store(node.dicom_port, mammogram(), tls_args=tls_to_node(ca.cert, sender)) == [admission.SUCCESS]


def test_a_plaintext_pacs_is_refused_unless_allowed_out_loud(tmp_path, pki, capsys, caplog):
    """``http://`` (or DIMSE without TLS) stops the node at start-up; ``--allow-plaintext-pacs``
    lets it start, with a warning in its log. TLS to the PACS trusts the CA it is given."""
    ca, node_pair, _ = pki
    issuer, secret, key = TRUSTED["issuer"], tmp_path / "client.secret", tmp_path / "phi.key"
    secret.write_text("a-client-secret")
    key.write_bytes(NODE_KEY)
    common = ["--gateway", "http://127.0.0.1:9", "--pacs-auth", "none", "--sender", "ORTHANC",
              "--oidc-issuer", issuer.url, "--oidc-audience", issuer.audience, "--client-id", "dicom-node",
              "--client-secret-file", str(secret), "--audit-log", str(tmp_path / "cli-audit.jsonl"),
              "--phi-key-file", str(key)]
    http = ["--store-to", "dicomweb", "http://pacs.example:8042/dicom-web", *common]
    dimse = ["--store-to", "dimse", "pacs.example:104:PACS", *common]
    tls = ["--pacs-tls-ca", str(ca.cert), "--pacs-tls-cert", str(node_pair.cert), "--pacs-tls-key", str(node_pair.key)]
    for argv in (http, dimse):
        assert node_main(argv) == 2
        assert "unencrypted" in capsys.readouterr().err
    assert not (tmp_path / "cli-audit.jsonl").exists(), "refused before anything was opened"

    def configured(argv):
        made = node_config(build_parser().parse_args(argv))
        made.doors.log.close()
        return made.store

    with caplog.at_level(logging.WARNING, logger="dicom_node"):
        assert str(configured([*http, "--allow-plaintext-pacs"])) == "DICOMweb http://pacs.example:8042/dicom-web"
    assert "REPORTS GO TO THE PACS UNENCRYPTED" in caplog.text
    https = configured(["--store-to", "dicomweb", "https://pacs.example/dicom-web", *common, *tls])
    assert (https.session.verify, https.session.cert) == (str(ca.cert), (str(node_pair.cert), str(node_pair.key)))
    assert str(configured([*dimse, *tls])) == "DIMSE over TLS PACS@pacs.example:104"


def test_the_log_names_studies_and_instances_by_keyed_pseudonyms(caplog):
    """Not by UID, nor by a plain hash of it, which anyone who can query the PACS could compute."""
    image = mammogram()
    header = pydicom.dcmread(io.BytesIO(image), stop_before_pixels=True)
    instance, study = str(header.SOPInstanceUID), str(header.StudyInstanceUID)
    with caplog.at_level(logging.INFO, logger="dicom_node"), running_node() as node:
        assert c_store(node.dicom_port, image) == [admission.SUCCESS]
        assert stow(node.http_port, mammogram(study, "MLO")).status_code == 200
    assert tag(NODE_KEY, "instance", instance) in caplog.text and tag(NODE_KEY, "study", study) in caplog.text
    for unkeyed in (instance, study, *(hashlib.sha256(u.encode()).hexdigest()[:12] for u in (instance, study))):
        assert unkeyed not in caplog.text, f"{unkeyed!r} in the node's log"
    # the audit names them alike: a log line and its audit event can be matched
    pseudonyms = {e["what"].get("pseudonym") for event in audit.read(TRUSTED["audit"]) for e in event["entity"]}
    assert {tag(NODE_KEY, "instance", instance), tag(NODE_KEY, "study", study)} <= pseudonyms


# -- the node's reports: retries, and nothing half-done -----------------------------------------

def test_reports_are_retried_and_a_study_is_stored_whole_or_not_at_all():
    flaky_once, always_down, refused_image = set(), set(), set()

    def answer(request, header):
        uid = header.SOPInstanceUID
        if uid in always_down:
            return Response('{"error": "model server unavailable"}', 503, content_type="application/json",
                            headers={"Retry-After": "0"})
        if uid in refused_image:
            return Response('{"error": "not an image this model reads"}', 422, content_type="application/json")
        if uid in flaky_once:
            flaky_once.discard(uid)
            return Response('{"error": "busy"}', 503, content_type="application/json")
        return sr_answer(request, header)

    good, flaky, down, wrong = (mammogram() for _ in range(4))
    same_study = generate_uid()
    mixed = [mammogram(same_study), mammogram(same_study)]
    uid = {d: str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in (good, flaky, down, wrong, *mixed)}
    flaky_once.add(uid[flaky])
    always_down.add(uid[mixed[1]])
    refused_image.add(uid[wrong])
    with fake_gateway(answer) as (url, seen):
        store = RecordingStore(fail_first=1)
        reporter = Reporter(url, {"mammography": "progressive"}, store, Retry(3, 0.0, sleep=lambda s: None))
        with running_node(report=reporter, quiet_s=0.3) as node:
            assert c_store(node.dicom_port, good, flaky, wrong, *mixed) == [admission.SUCCESS] * 5
            wait_for(lambda: node.inbox.status()["held_bytes"] == 0 and len(seen) >= 8, what="every batch reported")
    assert {path for path, _, _ in seen} == {"/api/v1/cohorts/mammography/progressive:compare"}
    assert {accept for _, accept, _ in seen} == {"application/dicom"}
    stored = [set(p) for p in store.puts]
    reported = set().union(*stored)
    # the flaky image was asked again; the refused image and the study with a failing image got nothing
    assert sum(1 for *_, u in seen if u == uid[flaky]) == 2 and sum(1 for *_, u in seen if u == uid[mixed[1]]) == 3
    assert len(reported) == 2, "good and flaky: one SR each; none for the refused image or the failing study"
    assert set().union(*store.sources) == {uid[good], uid[flaky]}
    # the one failed put was retried with the same SR objects: same SOP Instance UIDs, no duplicate
    assert stored[0] in stored[1:]


def test_an_answer_that_is_not_a_report_on_the_image_is_not_filed():
    other = pydicom.dcmread(io.BytesIO(mammogram()), stop_before_pixels=True)

    def elsewhere(request, header):        # a report about another image, in another study
        return sr_answer(request, other)

    def json_only(request, header):        # a gateway without the Accept path
        return Response('{"models": []}', 200, content_type="application/json")

    for answer, reason in [(elsewhere, "not in the image's study"), (json_only, "not a DICOM SR")]:
        with fake_gateway(answer) as (url, _):
            reporter = Reporter(url, {"mammography": "progressive"}, RecordingStore())
            instance = admission.admit(mammogram())
            with pytest.raises(Exception, match=reason):
                reporter.ask(instance)


# -- per-site operating points: the node asks the real gateway for its senders' sites -------------

def test_the_node_asks_for_the_site_its_sender_or_institution_maps_to(pipeline_outputs, tmp_path, issuer):
    """The node's own reporter (built from its configuration) asks a real gateway, as itself:
    an image from the AE title mapped to site north, and one whose Institution Name is mapped to
    it, get SRs at north's accepted operating point for the model north accepted; an image from
    an unmapped sender gets the model's own, as does every model without a north profile."""
    from components.core.identity import ClientCredentials
    from serving import sites
    from tests.conftest import live_gateway
    from tests.test_sites import algorithm_parameters, write_profile

    north_aet, name = "NORTH_US", "ultrasound-resnet50-unfrozen"
    senders = {north_aet: frozenset(), "TEST_SCU": frozenset()}
    site_map = node_sites.parse([f"{north_aet}=north"], ["North Hospital=north"], senders)
    issuer.register_client("site-node", "site-node-secret", ["clinician"])
    root = tmp_path / "repo"
    images = {"by AE title": (north_aet, dicom_fixtures.ultrasound()),
              "unmapped": ("TEST_SCU", dicom_fixtures.ultrasound()),
              "by institution": ("TEST_SCU", dicom_fixtures.ultrasound(InstitutionName="  north HOSPITAL"))}
    with live_gateway(pipeline_outputs, root, issuer) as (_, gateway):
        sites.accept(root, name, write_profile(tmp_path / "profiles", "north", name, 1, 2.0, 0.5), "north accepted")
        store = KeepingStore()
        doors = Doors(senders, None, audit.ChainedLog(TRUSTED["audit"]), NODE_KEY)
        config = NodeConfig(ae_title=NODE_AET, gateway=f"http://{gateway}", store=store, doors=doors,
                            credentials=ClientCredentials(issuer.url, "site-node", "site-node-secret"),
                            strategies={"mammography": "progressive", "ultrasound": "unfrozen"}, sites=site_map,
                            dicom_port=0, http_port=0, quiet_s=0.3, retry=Retry(2, 0.0, sleep=lambda s: None))
        node = Node(config).start()
        try:
            for calling, image in images.values():
                assert c_store_from(calling, node.dicom_port, image) == [admission.SUCCESS]
            wait_for(lambda: len(store.datasets) == 3, 120, "three reports")
        finally:
            node.stop()
            doors.log.close()
        at_north = requests.post(f"http://{gateway}/api/v1/cohorts/ultrasound/unfrozen:compare", params={"site": "north"},
                                 data=images["by AE title"][1], timeout=60, headers={
                                     "Content-Type": "application/dicom", "Accept": "application/json",
                                     **issuer.headers()}).json()
    reports = {str(pydicom.dcmread(io.BytesIO(image), stop_before_pixels=True).SOPInstanceUID): how
               for how, (_, image) in images.items()}
    said = {reports[next(iter(referenced_instances(sr)))]: algorithm_parameters(sr) for sr in store.datasets}
    for how in ("by AE title", "by institution"):
        assert "operating_point=site north" in said[how][name], how
        assert "operating_point=model own" in said[how]["ultrasound-vgg16-unfrozen"], how
    assert all("operating_point=model own" in parameters for parameters in said["unmapped"].values())
    assert "ultrasound-ensemble-unfrozen" in said["unmapped"] and "ultrasound-ensemble-unfrozen" not in said["by AE title"]
    (north_sr,) = [sr for sr in store.datasets if reports[next(iter(referenced_instances(sr)))] == "by AE title"]
    probability = {g.tracking_identifier.rsplit(" ", 1)[0]: g.get_measurements(name=codes.DCM.ProbabilityOfCancer)[0]
                   for g in hd.sr.Comprehensive3DSR.from_dataset(north_sr).content.get_image_measurement_groups()}
    answered = next(m for m in at_north["models"] if m["model"] == name)
    assert answered["operating_point"]["site"] == "north"
    assert probability[name].value == pytest.approx(answered["probability"], abs=1e-6)


def test_site_mappings_are_checked_when_the_node_starts():
    senders = {"NORTH_US": frozenset()}
    for aets, institutions, message in [(["ELSEWHERE=north"], [], "not a --sender"),
                                        (["NORTH_US=North Site"], [], "a site is 1 to 32"),
                                        ([], ["=north"], "give NAME=SITE"),
                                        ([], ["North Hospital"], "give NAME=SITE")]:
        with pytest.raises(ValueError, match=message):
            node_sites.parse(aets, institutions, senders)
    mapped = node_sites.parse(["NORTH_US=north"], ["North  Hospital=north-2"], senders)
    stow_image = admission.admit(dicom_fixtures.ultrasound(InstitutionName="NORTH HOSPITAL"))    # no AE title
    assert mapped.site_for(stow_image) == "north-2"
    assert mapped.site_for(admission.admit(dicom_fixtures.ultrasound(InstitutionName="North Hospital"),
                                           "NORTH_US")) == "north"           # the AE title wins
    assert mapped.site_for(admission.admit(dicom_fixtures.ultrasound())) is None


class KeepingStore:
    """A PACS that keeps the SRs it is given."""

    def __init__(self):
        self.datasets = []

    def put(self, datasets):
        self.datasets.extend(datasets)


def c_store_from(calling: str, port: int, *instances: bytes) -> list[int]:
    assoc = scu(calling=calling).associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established, f"association from {calling} refused"
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status) for data in instances]
    finally:
        assoc.release()


# -- with a real PACS ---------------------------------------------------------------------------

@orthanc.required
@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_orthanc_sends_an_image_and_receives_the_report(tmp_path, kind):
    """Orthanc C-STOREs to the node over DICOM TLS; the node files the (stand-in gateway's) SR
    back, by STOW-RS over HTTPS or by C-STORE over DICOM TLS, presenting its certificate either
    way, and Orthanc's QIDO-RS finds it in the image's study."""
    node_port = orthanc.free_port()
    with orthanc.running(tmp_path / "orthanc", node=(NODE_AET, node_port)) as archive, \
            fake_gateway(sr_answer) as (url, _):
        own = archive.ca.certify("node")
        tls = TLSFiles(own.cert, own.key, archive.ca.cert)
        if kind == "dicomweb":
            auth = f"basic:node:{archive.password_file(tmp_path)}"
            store = pacs.store_to(kind, archive.dicomweb, NODE_AET, auth, tls)
        else:
            store = pacs.store_to(kind, "{}:{}:{}".format(*archive.dicom, archive.aet), NODE_AET, tls=tls)
        reporter = Reporter(url, {"mammography": "progressive"}, store, Retry(3, 0.5))
        with running_node(report=reporter, dicom_port=node_port, quiet_s=0.5, dicom_tls=tls) as node:
            image = mammogram()
            header = pydicom.dcmread(io.BytesIO(image), stop_before_pixels=True)
            archive.send("node", archive.upload(image))
            client = DICOMwebClient(archive.dicomweb, session=archive.session())
            (found,) = wait_for(lambda: client.search_for_instances(
                study_instance_uid=header.StudyInstanceUID, search_filters={"Modality": "SR"}), what="the SR in Orthanc")
            wait_for(lambda: node.inbox.status()["held_bytes"] == 0, what="the batch released")
        assert header.SOPInstanceUID in referenced_instances(_retrieve(client, found))


# -- the round trip with the real gateway and model server --------------------------------------

@orthanc.required
@dciodvfy.required
def test_round_trip_pacs_node_gateway_and_back(pipeline_outputs, tmp_path, issuer):
    """The trained models behind the real gateway; the node as a process (its command line);
    Orthanc as the PACS, requiring authentication. Two mammograms of one study and a sonogram of
    another go in; each gets an SR in its own study that references it, says what the gateway's
    JSON API says of the same image, and passes dciodvfy; the node's log names no patient. Every
    hop presents a credential: Orthanc's C-STORE comes from an admitted AE title over DICOM TLS
    with Orthanc's certificate, the node asks the gateway with its own client-credentials token,
    and writes to Orthanc as its user over HTTPS with its own certificate."""
    from serving import repository
    from tests.conftest import PHI_KEY, live_gateway

    root = tmp_path / "repo"
    repository.push(pipeline_outputs["mammography-resnet50-progressive"] / "saved_model", root)
    node_port, http_port = orthanc.free_port(), orthanc.free_port()
    mg_study = generate_uid()
    images = [mammogram(mg_study, "CC"), mammogram(mg_study, "MLO"), dicom_fixtures.ultrasound()]
    log_path = tmp_path / "node.log"
    secret = tmp_path / "node-client.secret"
    secret.write_text("node-client-secret-for-the-test")
    issuer.register_client("dicom-node", secret.read_text(), ["clinician"])
    with orthanc.running(tmp_path / "orthanc", node=(NODE_AET, node_port)) as archive, \
            live_gateway(pipeline_outputs, root, issuer, tls_files=TLSFiles(*_pair(archive.ca, "gateway"))) \
            as (_, gateway), open(log_path, "w") as log:
        anonymous, _ = archive.rest("GET", "/dicom-web/studies", user=None)
        assert anonymous == 401, "the PACS must require authentication for this test to mean anything"
        own = archive.ca.certify("node")
        gateway = f"https://localhost:{gateway.rsplit(':', 1)[1]}"           # the name its certificate carries
        certificates = [f"--{hop}-tls-{part}={path}" for hop in ("dicom", "pacs", "http", "gateway")
                        for part, path in (("cert", own.cert), ("key", own.key), ("ca", archive.ca.cert))
                        if (hop, part) != ("http", "ca")]                # STOW-RS clients bring tokens, not certificates
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "--gateway", gateway,
             "--store-to", "dicomweb", archive.dicomweb, "--ae-title", NODE_AET, "--dicom-port", str(node_port),
             "--http-port", str(http_port), "--quiet-seconds", "2", "--retry-delay", "1",
             "--strategy", "mammography=progressive", "--strategy", "ultrasound=unfrozen",
             "--sender", f"{orthanc.AE_TITLE}=127.0.0.1", "--oidc-issuer", issuer.url,
             "--oidc-audience", issuer.audience, "--client-id", "dicom-node", "--client-secret-file", str(secret),
             "--pacs-auth", f"basic:node:{archive.password_file(tmp_path)}",
             "--audit-log", str(tmp_path / "node-audit.jsonl"), *certificates],
            stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "BCIMAGING_PHI_KEY": PHI_KEY.decode()})
        try:
            wait_for(lambda: _healthy(http_port, archive.ca.cert), 60, "the node's /healthz over HTTPS")
            for image in images:
                archive.send("node", archive.upload(image))
            client = DICOMwebClient(archive.dicomweb, session=archive.session())
            for image in images:
                _check_report(client, image, gateway, "ultrasound/unfrozen"
                              if pydicom.dcmread(io.BytesIO(image)).Modality == "US" else "mammography/progressive",
                              issuer, archive.ca.cert)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- the node's log ---\n{log_path.read_text()[-4000:]}") from None
        finally:
            process.terminate()
            process.wait(timeout=60)
    log_text = log_path.read_text()
    assert process.returncode == 0 and "Traceback" not in log_text, log_text[-3000:]
    header = pydicom.dcmread(io.BytesIO(images[0]), stop_before_pixels=True)
    for secret in (str(header.PatientName), str(header.PatientID), str(header.SOPInstanceUID), mg_study):
        assert secret not in log_text, f"{secret!r} in the node's log"
    assert "C-STORE on" in log_text and "(DICOM TLS, senders' certificates required)" in log_text
    instance = str(header.SOPInstanceUID)
    assert tag(PHI_KEY, "instance", instance) in log_text and "stored 2 report(s)" in log_text
    assert hashlib.sha256(instance.encode()).hexdigest()[:12] not in log_text, "an unkeyed hash of a UID in the log"
    assert audit.verify(tmp_path / "node-audit.jsonl").ok
    events = list(audit.read(tmp_path / "node-audit.jsonl"))
    assert [e["agent"][0]["who"] for e in events if e["subtype"] == "c-store"] == [orthanc.AE_TITLE] * 3
    assert all(secret not in (tmp_path / "node-audit.jsonl").read_text() for secret in (mg_study, str(header.PatientID)))


def _healthy(port: int, ca=None) -> bool:
    try:
        if ca is None:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        return requests.get(f"https://localhost:{port}/healthz", timeout=2, verify=str(ca)).status_code == 200
    except requests.RequestException:
        return False


def _pair(ca, name: str):
    pair = ca.certify(name)
    return pair.cert, pair.key


def _check_report(client: DICOMwebClient, image: bytes, gateway: str, cohort: str, issuer, ca=None) -> None:
    header = pydicom.dcmread(io.BytesIO(image), stop_before_pixels=True)
    found = wait_for(lambda: [f for f in client.search_for_instances(
        study_instance_uid=header.StudyInstanceUID, search_filters={"Modality": "SR"})
        if header.SOPInstanceUID in referenced_instances(_retrieve(client, f))], 120, "the image's SR in Orthanc")
    assert len(found) == 1, "one report per image"
    report = _retrieve(client, found[0])
    findings = dciodvfy.validate(_part10(report))
    assert not findings.errors, findings.describe()
    answer = requests.post(f"{gateway}/api/v1/cohorts/{cohort}:compare", data=image, timeout=60,
                           verify=str(ca) if ca else True,
                           headers={"Content-Type": "application/dicom", "Accept": "application/json",
                                    **issuer.headers()})
    assert answer.status_code == 200, answer.text
    compared = answer.json()
    expected = {m["model"]: m["probability"] for m in compared["models"]}
    if compared["ensemble"]["available"]:
        expected[compared["ensemble"]["model"]] = compared["ensemble"]["probability"]
    said = {}
    for group in hd.sr.Comprehensive3DSR.from_dataset(report).content.get_image_measurement_groups():
        (probability,) = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)
        said[group.tracking_identifier.rsplit(" ", 1)[0]] = probability.value     # "<model> <version>"
    assert said.keys() == expected.keys()
    for model, probability in expected.items():
        assert said[model] == pytest.approx(probability, abs=1e-6), model


_retrieved: dict[str, pydicom.Dataset] = {}


def _retrieve(client: DICOMwebClient, found: dict) -> pydicom.Dataset:
    uids = [found[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018")]
    if uids[2] not in _retrieved:
        _retrieved[uids[2]] = client.retrieve_instance(*uids)
    return _retrieved[uids[2]]


def _part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
