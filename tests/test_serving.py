"""Model repository contract and the embedded server over real gRPC, with SavedModels made by
components.export."""
import concurrent.futures
import io
import json
import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from components.data import records, schema
from serving import configs, layout, protos, repository
from serving.client import ServingClient, ServingRejected
from serving.server import Server
from tests.conftest import export_variant


NAME = "ultrasound-resnet50-unfrozen"


@pytest.fixture()
def repo(pipeline_outputs, tmp_path):
    """One model: the tests of the server's API ask one model; loading the other five (each
    verified at its push, then loaded) cost about 15 s a test. Serving several models at once
    is the gateway tests' stack."""
    root = tmp_path / "repo"
    assert repository.push(pipeline_outputs[NAME] / "saved_model", root).pushed
    return root


def _pngs(sample_splits, modality, n=4):
    raw = sample_splits[modality].parent / "splits" / "test"
    return [schema.deserialize(r).image_png for r in records.read_records(raw)][:n]


CANARY = {"blessed": True, "reason": "blessed in a test"}


def test_push_is_atomic_idempotent_versioned_and_kept_to_n(pipeline_outputs, tmp_path):
    """The first version is stable, a blessed one canary; keep=2 keeps the last two and the
    stable one (a label's version is never deleted), and models.config serves the labelled ones."""
    export_dir = pipeline_outputs[NAME] / "saved_model"
    root = tmp_path / "repo"
    first = repository.push(export_dir, root, keep=2)
    again = repository.push(export_dir, root, keep=2)
    assert (first.version, first.pushed) == (1, True) and (again.version, again.pushed) == (1, False)
    changed = tmp_path / "changed"
    for i in range(3):
        shutil.copytree(export_dir, changed, dirs_exist_ok=True)
        card = json.loads((changed / layout.CARD).read_text())
        card["note"] = f"retrained {i}"
        (changed / layout.CARD).write_text(json.dumps(card))
        assert repository.push(changed, root, keep=2, canary=CANARY).version == 2 + i
    assert layout.versions(root, NAME) == [1, 3, 4]            # keep=2 dropped version 2, not the stable 1
    assert not [p for p in (root / NAME).iterdir() if p.name.startswith(".")]   # no half-pushed copies
    config = text_format.Parse((root / "models.config").read_text(), protos.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == NAME and entry.model_platform == "tensorflow"
    assert list(entry.model_version_policy.specific.versions) == [1, 4]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 4}
    batching = text_format.Parse((root / "batching.config").read_text(), protos.BatchingParameters())
    assert batching.max_batch_size.value == 16 and batching.batch_timeout_micros.value == 5000


def test_push_refuses_what_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a SavedModel"):
        repository.push(tmp_path, tmp_path / "repo")


def test_server_answers_like_tf_serving(repo, pipeline_outputs, sample_splits):
    server = Server(repo, port=0, poll_seconds=0.5)
    client = ServingClient(f"127.0.0.1:{server.port}", deadline_s=20)
    try:
        pngs = _pngs(sample_splits, "ultrasound")
        direct = tf.saved_model.load(str(pipeline_outputs[NAME] / "saved_model")).signatures["serving_default"]
        expected = direct(image_bytes=tf.constant(pngs))["probability"].numpy()
        got = [client.predict(NAME, png).outputs["probability"][0] for png in pngs]
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert client.status(NAME) == [(1, "AVAILABLE")]
        sigs = client.metadata(NAME).signature_def
        assert set(sigs["serving_default"].inputs) == {"image_bytes"}
        assert set(sigs["serving_default"].outputs) == {"probability", "label", "threshold"}
        assert client.predict(NAME, pngs[0], signature="explain").outputs["heatmap"].shape == (1, 32, 32)
        for call, code in [(lambda: client.predict("no-such-model", pngs[0]), grpc.StatusCode.NOT_FOUND),
                           (lambda: client.predict(NAME, pngs[0], version_label="canary"), grpc.StatusCode.NOT_FOUND),
                           (lambda: client.predict(NAME, b"not an image"), grpc.StatusCode.INVALID_ARGUMENT),
                           (lambda: client.predict(NAME, pngs[0], signature="nope"), grpc.StatusCode.INVALID_ARGUMENT)]:
            with pytest.raises(ServingRejected) as e:
                call()
            assert e.value.code == code
        # concurrent requests are batched, and a bad image fails only its own request
        batcher = server.store.loaded[NAME][1].batchers["serving_default"]
        before = batcher.batches_run
        inputs = pngs * 4 + [b"broken"]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda b: client.predict_many([NAME], b)[0], inputs))
        assert all(not isinstance(o, Exception) for o in outcomes[:-1]) and isinstance(outcomes[-1], ServingRejected)
        assert batcher.batches_run - before < len(inputs)
        # a new version pushed to the repository is picked up by polling
        changed = repo.parent / "v2"
        shutil.copytree(pipeline_outputs[NAME] / "saved_model", changed)
        (changed / layout.CARD).write_text((changed / layout.CARD).read_text().replace("}", ', "note": "v2"}', 1))
        assert repository.push(changed, repo, canary=CANARY).version == 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (2, "AVAILABLE") not in client.status(NAME):
            time.sleep(0.3)
        assert client.status(NAME) == [(1, "AVAILABLE"), (2, "AVAILABLE")]
        assert client.predict(NAME, pngs[0], version_label="canary").version == 2
        assert client.predict(NAME, pngs[0], version_label="stable").version == 1
    finally:
        client.close()
        server.stop()


def _export_with_card(pipeline_outputs, tmp_path, **changes):
    export_dir = tmp_path / "export"
    shutil.copytree(pipeline_outputs[NAME] / "saved_model", export_dir)
    card = json.loads((export_dir / layout.CARD).read_text())
    for key, value in changes.items():
        if value is None:
            card.pop(key)
        else:
            card[key] = value
    (export_dir / layout.CARD).write_text(json.dumps(card))
    return export_dir


@pytest.mark.parametrize("changes, message", [
    ({"model_name": "../../pwned"}, "not <modality>-<backbone>-<strategy>"),
    ({"model_name": "/tmp/ultrasound-resnet50-unfrozen"}, "unknown modality"),
    ({"model_name": "ultrasound-resnet50-progressive"}, "disagrees"),
    ({"strategy": None}, "'strategy' is missing"),
    ({"threshold": "high"}, "'threshold' is not int or float"),
    ({"label_names": ["only one"]}, "two strings"),
])
def test_push_checks_the_card_before_writing_anything(pipeline_outputs, tmp_path, changes, message):
    """Regression: a card named ../../pwned wrote outside the repository, and a card
    without strategy took every gateway page down. Now the push refuses both, writing nothing."""
    export_dir = _export_with_card(pipeline_outputs, tmp_path, **changes)
    root = tmp_path / "area" / "repo"
    with pytest.raises(ValueError, match=message):
        repository.push(export_dir, root)
    assert not root.exists() and sorted(p.name for p in (tmp_path).iterdir()) == ["export"]


def test_published_versions_are_world_readable_and_stale_staging_is_cleaned(pipeline_outputs, tmp_path):
    """Regression: published folders were 0700 and files 0600 (a server under another uid
    could not read them), and a push killed mid-copy left its staging folder for good."""
    root = tmp_path / "repo"
    stale = root / NAME / ".push-1-killed"
    stale.mkdir(parents=True)
    (stale / "saved_model.pb").write_bytes(b"half")
    result = repository.push(pipeline_outputs[NAME] / "saved_model", root)
    version = root / NAME / str(result.version)
    modes = {p.relative_to(version).as_posix(): p.stat().st_mode & 0o777 for p in [version, *version.rglob("*")]}
    assert all(m == (0o755 if (version / p).is_dir() else 0o644) for p, m in modes.items()), modes
    assert not stale.exists() and not list((root / NAME).glob(".push-*"))


def _variant(pipeline_outputs, tmp_path, note: str, damage=None):
    return export_variant(pipeline_outputs[NAME] / "saved_model", tmp_path / note, note, damage)


def _batcher_threads(version: int, others: frozenset) -> list[str]:
    """Live batcher threads of NAME's ``version``, leaving out ``others`` (threads that other
    tests' servers, still running in this process, hold for the same model and version)."""
    import threading
    return [t.name for t in threading.enumerate()
            if t.name.startswith(f"batcher-{NAME}-{version}-") and t not in others]


def _wait(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


def _serve_versions(root, versions: list[int]) -> None:
    """models.config naming ``versions`` of NAME (as if they had passed the push's check and
    failed only on the server: its resources, its TensorFlow)."""
    config = configs.model_server_config(root)
    entry = next(c for c in config.model_config_list.config if c.name == NAME)
    del entry.model_version_policy.specific.versions[:]
    entry.model_version_policy.specific.versions.extend(versions)
    entry.version_labels.clear()
    (root / configs.MODELS_CONFIG).write_text(text_format.MessageToString(config))


def test_broken_pushes_never_take_the_serving_version_down(pipeline_outputs, sample_splits, tmp_path):
    import threading

    root = tmp_path / "repo"
    assert repository.push(pipeline_outputs[NAME] / "saved_model", root, keep=2).version == 1
    others = frozenset(threading.enumerate())
    server = Server(root, port=0, poll_seconds=0.2, retry_s=2.0)
    client = ServingClient(f"127.0.0.1:{server.port}", deadline_s=20)
    png = _pngs(sample_splits, "ultrasound", 1)[0]
    try:
        def corrupt_warmup(d):
            (d / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x00garbage" * 64)

        def truncate_graph(d):
            graph = d / "saved_model.pb"
            graph.write_bytes(graph.read_bytes()[:1000])

        # the push loads and warms an export up before publishing it: both broken ones are refused
        for note, damage in (("bad-warmup", corrupt_warmup), ("bad-graph", truncate_graph)):
            refused = repository.push(_variant(pipeline_outputs, tmp_path, note, damage), root, keep=2, canary=CANARY)
            assert not refused.pushed and refused.reason.startswith("refused: it does not load and warm up")
        assert layout.versions(root, NAME) == [1] and layout.labels(root, NAME) == {"stable": 1}
        # versions that fail only on the server (copied in, a config naming only them)
        for version, note, damage in ((2, "bad-warmup", corrupt_warmup), (3, "bad-graph", truncate_graph)):
            shutil.copytree(_variant(pipeline_outputs, tmp_path / str(version), note, damage), root / NAME / str(version))
        _serve_versions(root, [2, 3])
        assert _wait(lambda: {v for v, s in client.status(NAME) if s == "END"} == {2, 3})
        time.sleep(3.0)                                    # ~15 polls
        assert client.status(NAME) == [(1, "AVAILABLE"), (2, "END"), (3, "END")]
        assert client.predict(NAME, png).version == 1      # version 1 still answers
        # back-off: a failed version is not reloaded on every 0.2 s poll, and leaves no threads
        assert all(f.attempts <= 3 for f in server.store.failures.values())
        assert _batcher_threads(2, others) == [] and _batcher_threads(3, others) == [] and _batcher_threads(1, others)
        # a good push and its promotion replace version 1, which leaves only then
        assert repository.push(_variant(pipeline_outputs, tmp_path, "good", None), root, keep=2, canary=CANARY).version == 4
        repository.promote(root, NAME, 4, reason="the test's good version")
        assert _wait(lambda: client.status(NAME)[-1:] == [(4, "AVAILABLE")] and 1 not in dict(client.status(NAME)))
        assert client.predict(NAME, png).version == 4
        assert _wait(lambda: _batcher_threads(1, others) == [])
    finally:
        client.close()
        server.stop()
    # found in CI: a poll in flight during stop() loaded versions again, whose threads then lived on
    server.store.refresh()
    assert server.store.loaded == {} and _batcher_threads(4, others) == []


def _slow_batcher(max_batch_size=1, max_enqueued_batches=2, seconds=0.3):
    from serving.batching import Batcher

    def slow(image_bytes):
        time.sleep(seconds)
        return {"probability": tf.zeros([image_bytes.shape[0]])}
    return Batcher(slow, configs.Batching(max_batch_size=max_batch_size, batch_timeout_micros=1000,
                                             num_batch_threads=1, max_enqueued_batches=max_enqueued_batches))


def test_the_batch_queue_is_bounded_and_a_stop_fails_what_is_queued():
    from serving.errors import ServingError

    batcher = _slow_batcher()
    call = lambda: batcher({"image_bytes": np.array([b"x"])})    # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = [f.exception() for f in [pool.submit(call) for _ in range(8)]]
    full = [e for e in outcomes if isinstance(e, ServingError)]
    assert full and all(e.code == grpc.StatusCode.UNAVAILABLE and "queue is full" in str(e) for e in full)
    assert outcomes.count(None) >= 2

    batcher = _slow_batcher(max_enqueued_batches=10, seconds=0.5)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        waiting = [pool.submit(call) for _ in range(6)]
        time.sleep(0.2)
        started = time.monotonic()
        batcher.stop(drain=False)
        errors = [f.exception(timeout=5) for f in waiting]
    assert time.monotonic() - started < 2.0                   # nobody stays blocked
    assert sum(isinstance(e, ServingError) and e.code == grpc.StatusCode.UNAVAILABLE for e in errors) >= 4
    assert not any(t.is_alive() for t in batcher.threads)
    with pytest.raises(ServingError, match="unloaded"):
        call()


def test_the_gateway_speaks_tf_serving_protos_from_the_shipped_descriptor_set():
    """The descriptor set the gateway loads is exactly what the installed tensorflow-serving-api
    defines (rebuild with `python -m serving protos` after an upgrade). That the gateway imports no
    TensorFlow is one of the import contracts (.importlinter, tests/test_layout.py)."""
    from serving import protos_build

    assert protos.DESCRIPTORS.read_bytes() == protos_build.build_descriptor_set(), \
        "serving/tensorflow_serving.binpb is stale: run `python -m serving protos`"


def _rest(url: str, body: dict | None = None):
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_api_answers_as_tf_serving_documents_it(repo, pipeline_outputs, sample_splits):
    """Requests shaped exactly as TF Serving's REST documentation shows (api_rest.md), and the
    same probability as the gRPC Predict on the same PNG."""
    import base64

    server = Server(repo, port=0, rest_port=0)
    client = ServingClient(f"127.0.0.1:{server.port}", deadline_s=20)
    base = f"http://127.0.0.1:{server.rest_port}/v1/models/{NAME}"
    try:
        pngs = _pngs(sample_splits, "ultrasound", 2)
        b64 = [{"b64": base64.b64encode(p).decode()} for p in pngs]
        status, body = _rest(base)
        assert status == 200 and body == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
        assert _rest(base + "/versions/1")[0] == 200 and _rest(base + "/labels/stable")[0] == 200
        status, meta = _rest(base + "/metadata")
        sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert status == 200 and meta["model_spec"]["version"] == "1"
        assert sig["inputs"]["image_bytes"]["dtype"] == "DT_STRING" and set(sig["outputs"]) == {"probability", "label", "threshold"}

        grpc_p = [client.predict(NAME, p).outputs["probability"][0] for p in pngs]
        status, rows = _rest(base + ":predict", {"instances": b64})
        assert status == 200 and [r["probability"] for r in rows["predictions"]] == pytest.approx(grpc_p, abs=1e-6)
        assert set(rows["predictions"][0]) == {"probability", "label", "threshold"}
        status, cols = _rest(base + "/labels/stable:predict", {"signature_name": "serving_default",
                                                               "inputs": {"image_bytes": b64}})
        assert status == 200 and cols["outputs"]["probability"] == pytest.approx(grpc_p, abs=1e-6)
        status, heat = _rest(base + "/versions/1:predict", {"signature_name": "explain", "instances": b64[:1]})
        assert status == 200 and np.array(heat["predictions"][0]["heatmap"]).shape == (32, 32)

        for url, body, code, words in [
                (f"http://127.0.0.1:{server.rest_port}/v1/models/half:predict", {"instances": b64}, 404, "Servable not found"),
                (base + "/versions/9:predict", {"instances": b64}, 404, "Specific"),
                (base + "/labels/canary:predict", {"instances": b64}, 404, "version label"),
                (base + ":predict", {"instances": [{"b64": "%%%"}]}, 400, "base64"),
                (base + ":predict", {"instances": [{"b64": base64.b64encode(b"text").decode()}]}, 400, "image"),
                (base + ":predict", {"instances": b64, "inputs": b64}, 400, "not both"),
                (base + ":predict", {"signature_name": "nope", "instances": b64}, 400, "not found"),
                (base + ":predict", {}, 400, "Missing 'inputs' or 'instances'")]:
            status, answer = _rest(url, body)
            assert status == code and set(answer) == {"error"} and words in answer["error"], (url, body, answer)
    finally:
        client.close()
        server.stop()


def test_the_grpc_hop_speaks_mutual_tls_and_refuses_plaintext_and_strangers(repo, sample_splits, tmp_path, issuer):
    """The model server with a certificate from the test CA and client certificates required:
    the gateway, presenting its own, predicts through it; a plaintext channel and a client
    whose certificate comes from another authority get no answer."""
    from components.core.tls import TLSFiles
    from gateway.app import create_app
    from serving.client import ServingUnavailable
    from tests.conftest import gateway_config, signed_in
    from tests.tlsca import CertificateAuthority

    from serving.server import free_port

    ca, stranger = CertificateAuthority(tmp_path / "ca"), CertificateAuthority(tmp_path / "other", "other CA")
    served, gateway = ca.certify("model-server", client=False), ca.certify("gateway", server=False)
    port = free_port()
    target = f"localhost:{port}"
    # a client that starts before its server (a gateway pod before the model server's): its
    # channel's handshakes kept failing once the server was up, until it was renewed
    early = ServingClient(target, deadline_s=1.0, retries=0, tls=TLSFiles(gateway.cert, gateway.key, ca.cert))
    with pytest.raises(ServingUnavailable):
        early.status(NAME)
    server = Server(repo, port=port, tls=TLSFiles(served.cert, served.key, ca.cert))
    png = _pngs(sample_splits, "ultrasound", 1)[0]
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert early.status(NAME) == [(1, "AVAILABLE")]
                break
            except ServingUnavailable:
                assert time.monotonic() < deadline, "a client started before its server never reached it"
                time.sleep(0.5)
        early.close()
        secure = ServingClient(target, tls=TLSFiles(gateway.cert, gateway.key, ca.cert))
        assert 0.0 <= float(secure.predict(NAME, png).outputs["probability"][0]) <= 1.0
        secure.close()
        impostor = stranger.certify("impostor", server=False)
        for tls in (None, TLSFiles(impostor.cert, impostor.key, ca.cert), TLSFiles(ca=ca.cert)):
            client = ServingClient(target, deadline_s=2.0, retries=0, tls=tls)
            with pytest.raises(ServingUnavailable):
                client.predict(NAME, png)
            client.close()
        app = create_app(gateway_config(issuer, repo, target, serving_tls=TLSFiles(gateway.cert, gateway.key, ca.cert),
                                        repository_refresh_s=0))
        answer = signed_in(app.test_client(), issuer).post(
            f"/api/v1/models/{NAME}:predict", data={"image": (io.BytesIO(png), "scan.png")},
            content_type="multipart/form-data")
        assert answer.status_code == 200, answer.json
        assert answer.json["model"] == NAME
    finally:
        server.stop()
