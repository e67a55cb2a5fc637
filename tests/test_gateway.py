"""The real gateway against the embedded server over real gRPC on loopback, with SavedModels
made by components.export: API, pages, malformed uploads, model server outage and recovery."""
import base64
import io
import json
import shutil
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data import records, schema
from gateway.app import create_app
from serving import layout, repository
from serving.client import ServingClient
from serving.server import Server
from tests.conftest import gateway_config, signed_in


NAME = "ultrasound-resnet50-unfrozen"


@pytest.fixture(scope="module")
def stack(pipeline_outputs, tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("gateway-repo")
    for out in pipeline_outputs.values():
        repository.push(out / "saved_model", root)
    server = Server(root, port=0, poll_seconds=1.0)
    app = create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}", max_upload_bytes=2 * 1024 * 1024,
                                    deadline_s=3.0, repository_refresh_s=0))
    # a clinician who also operates the models: the pages, the API and the metrics
    client = signed_in(app.test_client(), issuer, ("clinician", "operator"))
    yield {"root": root, "server": server, "app": app, "client": client, "issuer": issuer}
    server.stop()


@pytest.fixture(scope="module")
def upload(sample_splits):
    raw = sample_splits["ultrasound"].parent / "splits" / "test"
    return [schema.deserialize(r).image_png for r in records.read_records(raw)][0]


def _multipart(data: bytes, field="image", filename="scan.png"):
    return {"data": {field: (io.BytesIO(data), filename)}, "content_type": "multipart/form-data"}


def _fresh(kwargs: dict) -> dict:
    """The same request arguments with new file objects (a sent file object is closed)."""
    data = kwargs.get("data")
    if isinstance(data, dict):
        data = {k: (io.BytesIO(f.getvalue()), name) for k, (f, name) in data.items()}
        return {**kwargs, "data": data}
    return dict(kwargs)


def test_model_list_routes_come_from_the_repository(stack):
    body = stack["client"].get("/api/v1/models").json
    assert len(body["models"]) == 6
    assert body["cohorts"]["ultrasound"]["unfrozen"] == ["ultrasound-resnet50-unfrozen", "ultrasound-vgg16-unfrozen",
                                                         "ultrasound-densenet121-unfrozen"]
    card = next(m for m in body["models"] if m["name"] == NAME)
    assert card["label_names"] == ["Benign or normal", "Malignant"] and "roc_auc" in card["test_metrics"]


def test_cards_are_listed_again_only_after_the_refresh_interval(stack, pipeline_outputs, tmp_path):
    """The repository listing is reused for ``refresh_s`` (it cost ~1.5 ms a call, several calls
    a request), and read again after it: a push shows within the interval."""
    from gateway.deployed import Deployed

    root = tmp_path / "repo"
    repository.push(pipeline_outputs[NAME] / "saved_model", root)
    deployed = Deployed(root, refresh_s=3600)
    assert list(deployed.cards()) == [NAME]
    other = "ultrasound-vgg16-unfrozen"
    repository.push(pipeline_outputs[other] / "saved_model", root)
    assert list(deployed.cards()) == [NAME]                     # within the interval: the listing held
    deployed.refresh_s = 0.0                                    # the interval has passed
    assert sorted(deployed.cards()) == sorted([NAME, other])    # read again

def test_single_prediction_multipart_and_json_match_the_model_server(stack, upload):
    c = stack["client"]
    a = c.post(f"/api/v1/models/{NAME}:predict", **_multipart(upload))
    b = c.post(f"/api/v1/models/{NAME}:predict", json={"image": {"b64": base64.b64encode(upload).decode()}})
    assert a.status_code == b.status_code == 200 and a.json == b.json
    direct = ServingClient(f"127.0.0.1:{stack['server'].port}").predict(NAME, upload)
    assert a.json["probability"] == pytest.approx(float(direct.outputs["probability"][0]), abs=1e-6)
    assert a.json["label"] == int(a.json["probability"] >= a.json["threshold"])
    assert a.json["label_name"] == ["Benign or normal", "Malignant"][a.json["label"]] and a.json["version"] == 1


def test_compare_asks_the_three_backbones(stack, upload):
    r = stack["client"].post("/api/v1/cohorts/ultrasound/unfrozen:compare", **_multipart(upload))
    assert r.status_code == 200
    models = r.json["models"]
    assert [m["model"] for m in models] == ["ultrasound-resnet50-unfrozen", "ultrasound-vgg16-unfrozen",
                                            "ultrasound-densenet121-unfrozen"]
    labels = [m["label"] for m in models]
    assert r.json["agreement"]["agreeing"] == max(labels.count(0), labels.count(1))
    assert stack["client"].post("/api/v1/cohorts/ultrasound/nope:compare", **_multipart(upload)).status_code == 404
    # the cohort ensemble: the mean of the three served probabilities at its validation threshold
    ensemble = r.json["ensemble"]
    card = json.loads((stack["root"] / NAME / "1" / "assets.extra" / "model_card.json").read_text())["cohort_ensemble"]
    assert ensemble["available"] and ensemble["model"] == "ultrasound-ensemble-unfrozen"
    assert ensemble["probability"] == pytest.approx(np.mean([m["probability"] for m in models]), abs=2e-6)
    assert ensemble["threshold"] == pytest.approx(card["threshold"]) and card["threshold_chosen_on"].endswith("validation")
    assert ensemble["label"] == int(ensemble["probability"] >= ensemble["threshold"])


def test_no_ensemble_answer_for_members_of_different_runs(pipeline_outputs, upload, tmp_path, issuer):
    """A cohort whose served versions were not validated together gets the three answers and
    the reason there is no combined one, never a combination nobody chose a threshold for."""
    root = tmp_path / "repo"
    for name in ("ultrasound-resnet50-unfrozen", "ultrasound-vgg16-unfrozen", "ultrasound-densenet121-unfrozen"):
        repository.push(pipeline_outputs[name] / "saved_model", root)
    card_path = root / "ultrasound-vgg16-unfrozen" / "1" / "assets.extra" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["cohort_ensemble"]["id"] = "another-run"
    card_path.write_text(json.dumps(card))
    server = Server(root, port=0)
    try:
        client = signed_in(create_app(gateway_config(issuer, root, f"127.0.0.1:{server.port}", deadline_s=3.0,
                                                     repository_refresh_s=0)).test_client(), issuer)
        r = client.post("/api/v1/cohorts/ultrasound/unfrozen:compare", **_multipart(upload))
        assert r.status_code == 200 and len(r.json["models"]) == 3
        assert r.json["ensemble"] == {"available": False, "reason": "the served versions come from different pipeline "
                                      "runs: no threshold was validated for this combination"}
        page = client.post("/cohorts/ultrasound/unfrozen", **_multipart(upload)).data.decode()
        assert "No cohort ensemble: the served versions come from different pipeline runs" in page
    finally:
        server.stop()


def test_health_readiness_metrics_and_openapi(stack, upload):
    c = stack["client"]
    assert c.get("/healthz").json == {"status": "ok"}
    assert c.get("/readyz").json == {"status": "ready", "models": 6}
    c.post(f"/api/v1/models/{NAME}:predict", **_multipart(upload))
    metrics = c.get("/metrics").data.decode()
    assert f'gateway_predictions_total{{model="{NAME}"}}' in metrics
    assert 'gateway_requests_total{endpoint="api.predict",status="200"}' in metrics
    doc = c.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    routes = {r.rule for r in stack["app"].url_map.iter_rules() if r.rule.startswith(("/api/", "/v2", "/healthz", "/readyz", "/metrics"))}
    documented = {p.replace("{", "<").replace("}", ">") for p in doc["paths"]} | {"/api/v1/openapi.json"}
    assert routes == documented


def _png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's calling card)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _encoded(fmt, mode="RGB", size=(64, 64), **kw):
    buf = io.BytesIO()
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def malformed_requests():
    png, jpeg, bmp = _encoded("PNG"), _encoded("JPEG"), _encoded("BMP")
    sixteen = io.BytesIO()
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(sixteen, format="PNG")
    b64 = lambda d: {"json": {"image": {"b64": base64.b64encode(d).decode()}}}
    return {
        "zero bytes": _multipart(b""),
        "truncated PNG": _multipart(png[: len(png) // 2]),
        "truncated JPEG": _multipart(jpeg[: len(jpeg) // 3], filename="x.jpg"),
        "text named .png": _multipart(b"just some notes\n" * 20),
        "20000x20000 PNG": _multipart(_png_header_only(20000, 20000)),
        "CMYK JPEG": _multipart(_encoded("JPEG", "CMYK"), filename="x.jpg"),
        "16-bit PNG": _multipart(sixteen.getvalue()),
        "GIF": _multipart(_encoded("GIF"), filename="x.gif"),
        "over the size limit": _multipart(png + b"\0" * (3 * 1024 * 1024)),
        "wrong field name": _multipart(png, field="file"),
        "bad base64": {"json": {"image": {"b64": "not//base64!!"}}},
        "JSON without image": {"json": {"picture": "x"}},
        "JSON image not an object": {"json": {"image": "aGVsbG8="}},
        "JSON list body": {"json": [1, 2, 3]},
        "base64 of text": b64(b"hello, not an image"),
        "base64 of nothing": b64(b""),
        "base64 of GIF": b64(_encoded("GIF")),
        "invalid JSON": {"data": b"{not json", "content_type": "application/json"},
        "plain text body": {"data": b"hello", "content_type": "text/plain"},
        "no body": {},
        "empty multipart file": _multipart(b"", filename=""),
        "PNG signature only": _multipart(b"\x89PNG\r\n\x1a\n"),
        "random bytes": _multipart(np.random.default_rng(1).bytes(5000)),
        "HTML named .jpg": _multipart(b"<html><body>hi</body></html>", filename="x.jpg"),
        "truncated BMP": _multipart(bmp[:200], filename="x.bmp"),
        "1x1 PNG": _multipart(_encoded("PNG", size=(1, 1))),
        "30000x1 PNG header": _multipart(_png_header_only(30000, 1)),
        "WebP": _multipart(_encoded("WEBP"), filename="x.webp"),
        "PDF": _multipart(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", filename="x.pdf"),
        "ICO": _multipart(_encoded("ICO", size=(32, 32)), filename="x.ico"),
        "JPEG header only": _multipart(b"\xff\xd8\xff\xe0" + b"\0" * 40, filename="x.jpg"),
    }


ACCEPTED = {"CMYK JPEG", "16-bit PNG"}   # awkward but valid: read correctly


def test_malformed_uploads_never_5xx_and_never_touch_disk(stack, tmp_path, monkeypatch):
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))     # where Werkzeug would spool uploads
    before = sorted(p for p in Path(stack["root"]).rglob("*"))
    cases = malformed_requests()
    assert len(cases) >= 30
    for label, kwargs in cases.items():
        for url in (f"/api/v1/models/{NAME}:predict", "/api/v1/cohorts/ultrasound/unfrozen:compare"):
            r = stack["client"].post(url, **_fresh(kwargs))
            assert r.status_code < 500, (label, url, r.status_code, r.data[:200])
            if label in ACCEPTED:
                assert r.status_code == 200, (label, r.json)
            else:
                assert 400 <= r.status_code < 500 and r.json["error"], (label, r.status_code)
        page = stack["client"].post(f"/models/{NAME}", **_fresh(kwargs))
        assert page.status_code < 500, (label, page.status_code)
        if label not in ACCEPTED:
            assert b'id="error-banner"' in page.data, label
    assert list(spool.iterdir()) == []
    assert sorted(p for p in Path(stack["root"]).rglob("*")) == before


def test_model_server_outage_gives_503_quickly_and_the_gateway_recovers(stack, upload):
    c = stack["client"]
    server, port = stack["server"], stack["server"].port
    server.stop()
    started = time.monotonic()
    r = c.post(f"/api/v1/models/{NAME}:predict", **_multipart(upload))
    assert r.status_code == 503 and "unavailable" in r.json["error"] and r.headers["Retry-After"]
    assert time.monotonic() - started < 3.0 + 1.0                       # within the deadline
    ready = c.get("/readyz")
    assert ready.status_code == 503
    for answer in (r.get_data(as_text=True), ready.get_data(as_text=True)):   # regression: addresses shown
        assert "127.0.0.1" not in answer and str(port) not in answer
    page = c.post(f"/models/{NAME}", **_multipart(upload))
    assert page.status_code == 503 and b"model server is unavailable" in page.data
    stack["server"] = Server(stack["root"], port=port, poll_seconds=1.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = c.post(f"/api/v1/models/{NAME}:predict", **_multipart(upload))
        if r.status_code == 200:
            break
        time.sleep(0.5)
    assert r.status_code == 200 and c.get("/readyz").status_code == 200


def test_pages_render_from_the_deployed_models(stack, upload):
    c = stack["client"]
    home = c.get("/").data.decode()
    for m in ("Mammography", "Ultrasound", "Histopathology"):
        assert m in home
    assert c.get("/modalities/ultrasound").status_code == 200
    page = c.post(f"/models/{NAME}", **_multipart(upload))
    assert page.status_code == 200 and b'id="result-label"' in page.data and b"data:image/png;base64," in page.data
    assert c.get(f"/models/{NAME}/pictures/roc.png").headers["Content-Type"] == "image/png"
    compare = c.post("/cohorts/ultrasound/unfrozen", **_multipart(upload)).data.decode()
    assert "models agree" in compare and compare.count('class="cell-') == 4 and 'id="ensemble"' in compare
    results = c.get("/results").data.decode()
    assert "ultrasound-vgg16-unfrozen" in results and "forest plot of test ROC-AUC" in results and "<circle" in results
    assert c.get("/models/nope").status_code == 404


def test_a_malformed_card_is_skipped_and_named_not_a_500_everywhere(stack, pipeline_outputs, tmp_path):
    """Regression: one card without `strategy` in the repository (written there by hand,
    past the push's checks) made /, /api/v1/models, /results and every modality page answer 500."""
    bad_name = "mammography-vgg16-unfrozen"
    assert bad_name not in [m["name"] for m in stack["client"].get("/api/v1/models").json["models"]]
    folder = stack["root"] / bad_name / "1"
    shutil.copytree(pipeline_outputs["histopathology-vgg16-progressive"] / "saved_model", folder)
    card_path = folder / layout.CARD
    card = json.loads(card_path.read_text())
    card.update(model_name=bad_name, modality="mammography", backbone="vgg16")
    card.pop("strategy")
    card_path.write_text(json.dumps(card))
    try:
        c = stack["client"]
        for path in ("/", "/api/v1/models", "/results", "/modalities/ultrasound", "/modalities/histopathology"):
            assert c.get(path).status_code == 200, path
        body = c.get("/api/v1/models").json
        assert bad_name not in [m["name"] for m in body["models"]] and len(body["models"]) == 6
        (skipped,) = body["skipped"]
        assert skipped["name"] == bad_name and "'strategy' is missing" in skipped["reason"]
    finally:
        shutil.rmtree(stack["root"] / bad_name)
    assert stack["client"].get("/api/v1/models").json["skipped"] == []


def test_security_headers_and_a_deeply_nested_json_body(stack):
    """Regression: no CSP, X-Content-Type-Options or X-Frame-Options headers, and 100,000
    nested "[" in a JSON body answered 500 (now refused by their count, 5,000 by their depth)."""
    c = stack["client"]
    for path in ("/", "/results", "/api/v1/models"):
        headers = c.get(path).headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Strict-Transport-Security"].startswith("max-age=")
    nested = c.post(f"/api/v1/models/{NAME}:predict", data="[" * 5_000, content_type="application/json")
    assert nested.status_code == 400 and "nested too deeply" in nested.json["error"]
    many = c.post(f"/api/v1/models/{NAME}:predict", data="[" * 100_000, content_type="application/json")
    assert many.status_code == 400 and "values" in many.json["error"]


def _peak(call) -> tuple[object, int]:
    """(result, peak bytes traced by tracemalloc) of one call."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_json_body_of_many_small_values_is_refused_before_it_is_parsed(stack):
    """3 MB of empty arrays cost +75 MB to parse (25 times its size); the JSON limits refuse it
    from a count of its separators, and a body over the JSON size limit from its length."""
    app = create_app(gateway_config(stack["issuer"], stack["root"], f"127.0.0.1:{stack['server'].port}"))
    c = signed_in(app.test_client(), stack["issuer"])
    amplifier = b'{"image": {"b64": [' + b"[]," * 1_000_000 + b"[]]}}"
    for path in (f"/api/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer"):
        answer, peak = _peak(lambda: c.post(path, data=amplifier, content_type="application/json"))
        assert answer.status_code == 400 and "values" in answer.json["error"], answer.json
        assert peak < 4 * len(amplifier) + 5_000_000, f"{path}: {peak / 1e6:.0f} MB for a 3 MB body"
    huge = b'{"image": {"b64": "' + b"A" * (25 << 20) + b'"}}'
    answer, peak = _peak(lambda: c.post(f"/api/v1/models/{NAME}:predict", data=huge, content_type="application/json"))
    assert answer.status_code == 413 and "JSON body" in answer.json["error"]
