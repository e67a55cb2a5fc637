"""Predictions for the gateway: one model, a cohort side by side, and the Grad-CAM overlay.
HTTP concerns live in the blueprints; this module speaks to the model server and turns its
answers into what people and programs read."""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import io
import time

import grpc
import numpy as np
from matplotlib import colormaps
from PIL import Image

from gateway import dicom_sr, operating
from gateway.access import note_models
from gateway.deployed import Deployed
from gateway.errors import NotDeployed
from gateway.uploads import Upload, UploadError
from serving.client import Prediction, ServingClient, ServingRejected, ServingUnavailable


def _result(deployed: Deployed, prediction: Prediction, label: str | None, site: str | None = None) -> dict:
    """One model's answer at the operating point of ``site`` (gateway.operating), which it names."""
    deployed.note_served(prediction.model, prediction.version)
    card = deployed.card_of(prediction.model, prediction.version)
    point = operating.point(deployed, prediction.model, prediction.version, site,
                            float(prediction.outputs["threshold"][0]))
    probability, answer = operating.apply(point, float(prediction.outputs["probability"][0]),
                                          int(prediction.outputs["label"][0]))
    return {"model": prediction.model, "version": prediction.version, "version_label": label,
            "probability": round(probability, 6), "label": answer,
            "label_name": (card or {}).get("label_names", ["negative", "positive"])[answer],
            "threshold": round(point["threshold"], 6), "operating_point": point}


def route(state, name: str, images: list[bytes], signature: str = "serving_default",
          version: int | None = None) -> tuple[Prediction, str | None]:
    """Ask the version the router picks (or ``version``). A label the model server does not
    know yet (it assigns one only once its version is loaded) falls back: canary to stable,
    stable to the server's latest, counted. Every call is counted and timed per version."""
    label = None if version is not None else state.router.label(state.deployed.labels(name))
    started = time.perf_counter()
    try:
        while True:
            try:
                prediction = state.client.predict_batch(name, images, signature, version=version, version_label=label)
                break
            except ServingRejected as e:
                if label is None or e.code != grpc.StatusCode.NOT_FOUND:
                    raise
                if label == "canary":
                    state.metrics.canary_fallbacks.labels(name).inc()
                label = "stable" if label == "canary" else None
    except (ServingRejected, ServingUnavailable):
        known = version or state.deployed.labels(name).get(label or "stable", "unknown")
        state.metrics.version_requests.labels(name, str(known), label or "latest", "error").inc()
        raise
    state.metrics.version_latency.labels(name, str(prediction.version)).observe(time.perf_counter() - started)
    note_models((name, prediction.version))
    return prediction, label


def predict(state, name: str, upload: Upload, site: str | None = None) -> dict:
    """``site``: checked by the caller (gateway.operating.resolve), before the image is read."""
    if state.deployed.card(name) is None:
        raise NotDeployed(f"no model named {name!r} is deployed")
    prediction, label = route(state, name, [upload.png])
    result = _result(state.deployed, prediction, label, site)
    # drift watches what the model served, whatever operating point the answer used
    state.metrics.observe(name, prediction.version, label, float(prediction.outputs["probability"][0]), upload.stats)
    return result


def compare(state, names: list[str], upload: Upload, site: str | None = None) -> dict:
    """The cohort's models asked in parallel, each at its stable version (the ensemble was
    validated with those) and at ``site``'s operating point where one is in effect for it;
    agreement says whether their labels concur, and the cohort ensemble combines their answers
    (no forward pass of its own)."""
    labels = {n: "stable" if "stable" in state.deployed.labels(n) else None for n in names}
    outcomes = dict(zip(names, state.client.predict_many(names, upload.png, version_labels=labels)))
    unknown = [n for n, o in outcomes.items() if isinstance(o, ServingRejected) and o.code == grpc.StatusCode.NOT_FOUND
               and labels[n]]           # a label the server has not assigned yet: its latest answers
    if unknown:
        outcomes.update(zip(unknown, state.client.predict_many(unknown, upload.png)))
        labels.update({n: None for n in unknown})
    results, probabilities = [], {}
    for name, outcome in outcomes.items():
        if isinstance(outcome, ServingUnavailable):
            raise outcome
        if isinstance(outcome, ServingRejected):
            results.append({"model": name, "error": str(outcome)})
        else:
            results.append(_result(state.deployed, outcome, labels[name], site))
            probabilities[name] = float(outcome.outputs["probability"][0])
            state.metrics.observe(name, outcome.version, labels[name], probabilities[name], upload.stats)
    note_models(*[(r["model"], r.get("version")) for r in results])
    labels_ = [r["label"] for r in results if "label" in r]
    agree = max(labels_.count(0), labels_.count(1)) if labels_ else 0
    return {"models": results, "agreement": {"agreeing": agree, "of": len(labels_),
                                             "unanimous": bool(labels_) and agree == len(labels_)},
            "ensemble": ensemble(state.deployed, names, probabilities, results)}


def ensemble(deployed: Deployed, names: list[str], probabilities: dict[str, float], results: list[dict] = ()) -> dict:
    """The cohort ensemble's answer: the mean of the members' calibrated probabilities at the
    threshold chosen on validation (components.ensemble), when the versions that answered are
    the members that ensemble was validated with and every member answered at its own operating
    point; otherwise why there is none. A site's profiles are accepted per model: no profile
    exists for the ensemble, and its validation threshold is the kind that does not travel to a
    site, so beside members at a site's operating point it would contradict them."""
    def unavailable(reason: str) -> dict:
        return {"available": False, "reason": reason}

    if len(probabilities) != len(names):
        return unavailable("not every member of the cohort answered")
    at_site = sorted({r["operating_point"]["site"] for r in results if (r.get("operating_point") or {}).get("site")})
    if at_site:
        return unavailable(f"members answered at site {', '.join(at_site)}'s operating point, and no operating point "
                           "is accepted for the ensemble at that site")
    entries = [(deployed.card(n) or {}).get("cohort_ensemble") for n in names]
    if any(e is None for e in entries):
        return unavailable("the served versions' cards name no cohort ensemble (exported alone, or before ensembles)")
    if len({e["id"] for e in entries}) != 1:
        return unavailable("the served versions come from different pipeline runs: no threshold was validated "
                           "for this combination")
    entry = entries[0]
    if sorted(entry["members"]) != sorted(names):
        return unavailable(f"the ensemble was validated with {', '.join(entry['members'])}, "
                           f"the cohort serves {', '.join(names)}")
    probability = sum(probabilities.values()) / len(probabilities)
    label = int(probability >= entry["threshold"])
    label_names = (deployed.card(names[0]) or {}).get("label_names", ["negative", "positive"])
    threshold = round(float(entry["threshold"]), 6)
    return {"available": True, "model": entry["name"], "members": list(entry["members"]),
            "probability": round(probability, 6), "label": label, "label_name": label_names[label],
            "threshold": threshold, "combination": entry["combination"],
            "operating_point": {"site": None, "version": None, "temperature": 1.0, "threshold": threshold,
                                "acceptance_sha256": None,
                                "reason": "the ensemble's own operating point (chosen on validation)"}}


def not_ready(state) -> str | None:
    """Why the gateway cannot serve every deployed model now, or None when it can (the
    readiness of /readyz and /v2/health/ready). Notes each model's served version on the way.
    Raises ServingUnavailable when the model server does not answer."""
    if state.draining.is_set():
        return "the gateway is shutting down"
    names = sorted(state.deployed.cards())
    if not names:
        return "no model is deployed in the model repository"
    missing = []
    for name in names:
        try:
            rows = state.client.status(name)
        except ServingRejected:          # NOT_FOUND: no version of it is loaded (yet)
            rows = []
        available = [v for v, s in rows if s == "AVAILABLE"]
        if available:
            state.deployed.note_served(name, max(available))      # the version "latest" answers with
        else:
            missing.append(name)
    return f"not yet available on the model server: {', '.join(missing)}" if missing else None


def explain_overlay(client: ServingClient, name: str, png: bytes, version: int | None = None) -> str:
    """A data: URI of the upload (at the model's input size) under its Grad-CAM heat map (of
    ``version``: the one that answered the prediction)."""
    heat = client.predict_batch(name, [png], signature="explain", version=version).outputs["heatmap"][0]
    size = heat.shape[:2]
    base = Image.open(io.BytesIO(png)).convert("RGB").resize((size[1], size[0]))
    display = 256 if max(size) < 256 else max(size)
    colours = (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)
    overlay = Image.blend(base, Image.fromarray(colours), alpha=0.45).resize((display, display), Image.BILINEAR)
    buf = io.BytesIO()
    overlay.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MANUFACTURER = "bcimaging"


def dicom_report(deployed: Deployed, upload: Upload, answers: list[dict], ensemble_: dict | None = None) -> bytes:
    """The answers (and the cohort ensemble's, when it answered) as a TID 1500 SR on the
    uploaded DICOM image (gateway.dicom_sr), Part 10 bytes; each model signed with its card's
    SHA-256, the card of the version that answered."""
    if upload.dicom is None:
        raise UploadError(406, "a DICOM report (Accept: application/dicom) answers DICOM uploads only: "
                               "send the image as a DICOM Part 10 file, or accept application/json")
    results = [dicom_sr.ModelResult(a["model"], a["version"], _card_sha256(deployed, a["model"], a["version"]),
                                    a["probability"], a["threshold"], bool(a["label"]), **_point_of(a))
               for a in answers if "probability" in a]
    if ensemble_ and ensemble_.get("available"):
        entry = (deployed.card(answers[0]["model"]) or {}).get("cohort_ensemble", {})
        results.append(dicom_sr.ModelResult(
            ensemble_["model"], None, entry.get("id", ""), ensemble_["probability"], ensemble_["threshold"],
            bool(ensemble_["label"]), tuple(f"{a['model']}:{a['version']}" for a in answers if "version" in a)))
    try:
        return dicom_sr.to_bytes(dicom_sr.build_sr(upload.dicom, results, manufacturer=MANUFACTURER,
                                                   software_version=_software_version()))
    except dicom_sr.NonConformant as e:
        raise UploadError(422, f"{e}, so no DICOM report can be made on it (the value is not repeated here); "
                               "accept application/json for the answer alone") from None


def _point_of(answer: dict) -> dict:
    """The SR's words for the operating point an answer used."""
    point = answer.get("operating_point") or {}
    return {"site": point.get("site"), "temperature": point.get("temperature", 1.0),
            "acceptance_sha256": point.get("acceptance_sha256")}


def _card_sha256(deployed: Deployed, name: str, version: int) -> str:
    from serving import layout

    return hashlib.sha256((deployed.root / name / str(version) / layout.CARD).read_bytes()).hexdigest()


@functools.cache                       # the installed version: read once, not on every report
def _software_version() -> str:
    try:
        return importlib.metadata.version("bcimaging")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
