"""Locust users for ``make loadtest`` (run by bench/loadtest.py in its own environment, which
has Locust and not this product): each user posts the same PNG as JSON, either to one model
(LOADTEST_MODE=single) or to a cohort's compare (compare). Every answer must be 200; the
versions that answered are written to LOADTEST_VERSIONS when the test stops, so the load test
can check that no answer came from a version that was not serving."""
import base64
import collections
import json
import os

from locust import HttpUser, constant, events, task

MODE = os.environ.get("LOADTEST_MODE", "single")
MODEL = os.environ.get("LOADTEST_MODEL", "ultrasound-resnet50-unfrozen")
COHORT = os.environ.get("LOADTEST_COHORT", "ultrasound/unfrozen")
with open(os.environ["LOADTEST_PNG"], "rb") as f:
    BODY = json.dumps({"image": {"b64": base64.b64encode(f.read()).decode()}})
VERSIONS = collections.Counter()


class Client(HttpUser):
    wait_time = constant(0)

    @task
    def ask(self):
        path = f"/api/v1/models/{MODEL}:predict" if MODE == "single" else f"/api/v1/cohorts/{COHORT}:compare"
        with self.client.post(path, data=BODY, headers={"Content-Type": "application/json"}, name=MODE,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            answer = r.json()
            for result in answer["models"] if MODE == "compare" else [answer]:
                if "error" in result:
                    r.failure(f"{result['model']}: {result['error']}")
                    return
                VERSIONS[f"{result['model']}:{result['version']}"] += 1


@events.quitting.add_listener
def _write_versions(environment, **_):
    with open(os.environ["LOADTEST_VERSIONS"], "w") as f:
        json.dump(dict(VERSIONS), f)
