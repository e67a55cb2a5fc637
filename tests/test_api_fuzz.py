"""Schemathesis fuzzes the running gateway (waitress, real model server over gRPC) against its
own OpenAPI document: no 5xx, only documented status codes, answers that match their schemas,
and invalid requests rejected. Bounded to under a minute."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, live_gateway


CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,negative_data_rejection"


@pytest.fixture(scope="module")
def gateway_url(pipeline_outputs, tmp_path_factory, issuer):
    with live_gateway(pipeline_outputs, tmp_path_factory.mktemp("fuzz-repo"), issuer) as (_, address):
        yield f"http://{address}"


def test_schemathesis_finds_nothing_against_the_openapi_document(gateway_url, issuer):
    """With a token carrying every role, so every operation is reached (their refusals without
    one are tests/test_identity.py's)."""
    st = Path(sys.executable).parent / "st"
    report = ARTIFACTS / "schemathesis"
    shutil.rmtree(report, ignore_errors=True)
    token = issuer.token("fuzzer", ("clinician", "operator", "auditor"), expires_in=900)
    proc = subprocess.run([str(st), "run", f"{gateway_url}/api/v1/openapi.json", "--checks", CHECKS,
                           "--header", f"Authorization: Bearer {token}",
                           "--max-examples", "30", "--max-time", "20", "--seed", "20261124", "--workers", "1",
                           "--generation-database", "none", "--no-color", "--report", "junit",
                           "--report-dir", str(report)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout or "passed" in proc.stdout.lower(), proc.stdout[-3000:]
