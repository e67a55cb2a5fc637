"""The protocols clients already speak: the same PNG through the gateway's /api/v1, its Open
Inference Protocol v2 (with the official tritonclient.http), the model server's TF Serving REST
API and its gRPC Predict; and v2 readiness."""
import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from components.data import records, schema
from serving import repository
from serving.client import ServingClient
from tests.conftest import live_gateway


NAME = "ultrasound-resnet50-unfrozen"
SIGNED_IN: dict[str, str] = {}              # a clinician's Authorization header, set by the live fixture


@pytest.fixture(scope="module")
def live(pipeline_outputs, tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("v2-repo")
    with live_gateway(pipeline_outputs, root, issuer, rest_port=0, poll_seconds=3600) as (model_server, address):
        SIGNED_IN.update(issuer.headers())
        yield {"root": root, "server": model_server, "url": address, "issuer": issuer}


@pytest.fixture(scope="module")
def png(sample_splits):
    raw = sample_splits["ultrasound"].parent / "splits" / "test"
    return [schema.deserialize(r).image_png for r in records.read_records(raw)][1]


def _http(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={**SIGNED_IN, **({"Content-Type": "application/json"}
                                                                          if data else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_same_png_gives_the_same_probability_on_all_four_paths(live, png):
    import tritonclient.http as httpclient

    b64 = base64.b64encode(png).decode()
    # 1. the gateway's own API
    status, v1 = _http(f"http://{live['url']}/api/v1/models/{NAME}:predict", {"image": {"b64": b64}})
    assert status == 200
    # 2. OIP v2 through the official Triton client (BYTES input as binary tensor data)
    triton = httpclient.InferenceServerClient(live["url"])
    # the Triton client adds its own headers to the dict it is given: each call gets a copy
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(NAME, headers=dict(SIGNED_IN))
    metadata = triton.get_model_metadata(NAME, headers=dict(SIGNED_IN))
    assert metadata["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    image = httpclient.InferInput("image_bytes", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=object))
    result = triton.infer(NAME, [image], outputs=[httpclient.InferRequestedOutput("probability"),
                                                  httpclient.InferRequestedOutput("label", binary_data=False)],
                          headers=dict(SIGNED_IN))
    v2 = float(result.as_numpy("probability")[0])
    assert int(result.as_numpy("label")[0]) == v1["label"]
    # ... and as JSON tensor data, base64 where binary
    status, v2_json = _http(f"http://{live['url']}/v2/models/{NAME}/infer", {
        "id": "r1", "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [b64]}]})
    assert status == 200 and v2_json["id"] == "r1" and v2_json["model_version"] == "1"
    # 3. the model server's TF Serving REST API, as TF Serving documents it
    rest = f"http://127.0.0.1:{live['server'].rest_port}/v1/models/{NAME}:predict"
    status, tfs = _http(rest, {"instances": [{"b64": b64}]})
    assert status == 200
    # 4. its gRPC Predict, with tensorflow-serving-api's own stubs as TF Serving's client examples use them
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png]))
    with grpc.insecure_channel(f"127.0.0.1:{live['server'].port}") as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    grpc_p = float(tf.make_ndarray(answer.outputs["probability"])[0])
    thin = ServingClient(f"127.0.0.1:{live['server'].port}").predict(NAME, png)      # the gateway's own stubs
    assert float(thin.outputs["probability"][0]) == pytest.approx(grpc_p, abs=1e-6)
    json_p = next(o for o in v2_json["outputs"] if o["name"] == "probability")["data"][0]
    for p in (v1["probability"], v2, json_p, tfs["predictions"][0]["probability"]):
        assert p == pytest.approx(grpc_p, abs=1e-6)


def test_v2_ready_waits_for_every_configured_model(live, pipeline_outputs):
    url = f"http://{live['url']}/v2/health/ready"
    assert _http(url)[0] == 200
    repository.push(pipeline_outputs["mammography-resnet50-progressive"] / "saved_model", live["root"])
    status, body = _http(url)                  # its card is deployed; the server has not loaded it
    assert status == 503 and "mammography-resnet50-progressive" in body["error"]
    assert _http(f"http://{live['url']}/v2/models/mammography-resnet50-progressive/ready")[0] == 400
    live["server"].store.refresh()             # the poll, now
    assert _http(url) == (200, {"ready": True})


def test_v2_metadata_extensions_and_errors_follow_the_spec(live, png):
    status, meta = _http(f"http://{live['url']}/v2")
    assert status == 200 and {"binary_tensor_data", "bcimaging_explain", "bcimaging_compare"} <= set(meta["extensions"])
    b64 = base64.b64encode(png).decode()
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [b64]}
    status, heat = _http(f"http://{live['url']}/v2/models/{NAME}/versions/1/explain", {"inputs": [tensor]})
    assert status == 200 and heat["outputs"][0]["shape"] == [1, 32, 32]
    status, cohort = _http(f"http://{live['url']}/v2/cohorts/ultrasound/unfrozen/infer", {"inputs": [tensor]})
    outputs = {o["name"]: o for o in cohort["outputs"]}
    assert status == 200 and outputs["model"]["shape"] == [3] and cohort["parameters"]["of"] == 3
    # the cohort ensemble beside the three answers: their mean, at its validation threshold
    assert cohort["parameters"]["ensemble"] == "ultrasound-ensemble-unfrozen"
    mean = np.mean(outputs["probability"]["data"])
    assert outputs["ensemble_probability"]["data"][0] == pytest.approx(mean, abs=1e-5)
    assert outputs["ensemble_label"]["data"][0] == int(outputs["ensemble_probability"]["data"][0]
                                                       >= outputs["ensemble_threshold"]["data"][0])
    for path, body, code in [
            ("/v2/models/nope/infer", {"inputs": [tensor]}, 404),
            (f"/v2/models/{NAME}/versions/7/infer", {"inputs": [tensor]}, 404),
            (f"/v2/models/{NAME}/infer", {"inputs": [{**tensor, "datatype": "FP32"}]}, 400),
            (f"/v2/models/{NAME}/infer", {"inputs": [{**tensor, "data": ["***"]}]}, 400),
            (f"/v2/models/{NAME}/infer", {"inputs": [{**tensor, "data": [base64.b64encode(b"notes").decode()]}]}, 400),
            (f"/v2/models/{NAME}/infer", {"inputs": [{**tensor, "shape": [2]}]}, 400),
            (f"/v2/models/{NAME}/infer", {"inputs": [tensor], "outputs": [{"name": "nope"}]}, 400),
            (f"/v2/models/{NAME}/infer", {"nothing": True}, 400)]:
        status, answer = _http(f"http://{live['url']}{path}", body)
        assert status == code and list(answer) == ["error"], (path, answer)
