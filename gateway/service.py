"""Predictions for the gateway: one model, a cohort side by side, and the Grad-CAM overlay.
HTTP concerns live in the blueprints; this module speaks to the model server and turns its
answers into what people and programs read."""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

from gateway.deployed import Deployed
from gateway.errors import NotDeployed
from serving.client import Prediction, ServingClient, ServingRejected, ServingUnavailable


def _result(deployed: Deployed, prediction: Prediction) -> dict:
    deployed.note_served(prediction.model, prediction.version)
    card = deployed.card(prediction.model)
    probability = float(prediction.outputs["probability"][0])
    label = int(prediction.outputs["label"][0])
    return {"model": prediction.model, "version": prediction.version, "probability": round(probability, 6),
            "label": label, "label_name": (card or {}).get("label_names", ["negative", "positive"])[label],
            "threshold": round(float(prediction.outputs["threshold"][0]), 6)}


def predict(client: ServingClient, deployed: Deployed, name: str, png: bytes) -> dict:
    if deployed.card(name) is None:
        raise NotDeployed(f"no model named {name!r} is deployed")
    return _result(deployed, client.predict(name, png))


def compare(client: ServingClient, deployed: Deployed, names: list[str], png: bytes) -> dict:
    """The cohort's models asked in parallel; agreement says whether their labels concur, and
    the cohort ensemble combines their answers (no forward pass of its own)."""
    results, probabilities = [], {}
    for name, outcome in zip(names, client.predict_many(names, png)):
        if isinstance(outcome, ServingUnavailable):
            raise outcome
        if isinstance(outcome, ServingRejected):
            results.append({"model": name, "error": str(outcome)})
        else:
            results.append(_result(deployed, outcome))
            probabilities[name] = float(outcome.outputs["probability"][0])
    labels = [r["label"] for r in results if "label" in r]
    agree = max(labels.count(0), labels.count(1)) if labels else 0
    return {"models": results, "agreement": {"agreeing": agree, "of": len(labels),
                                             "unanimous": bool(labels) and agree == len(labels)},
            "ensemble": ensemble(deployed, names, probabilities)}


def ensemble(deployed: Deployed, names: list[str], probabilities: dict[str, float]) -> dict:
    """The cohort ensemble's answer: the mean of the members' calibrated probabilities at the
    threshold chosen on validation (components.ensemble), when the versions that answered are
    the members that ensemble was validated with; otherwise why there is none."""
    def unavailable(reason: str) -> dict:
        return {"available": False, "reason": reason}

    if len(probabilities) != len(names):
        return unavailable("not every member of the cohort answered")
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
    return {"available": True, "model": entry["name"], "members": list(entry["members"]),
            "probability": round(probability, 6), "label": label, "label_name": label_names[label],
            "threshold": round(float(entry["threshold"]), 6), "combination": entry["combination"]}


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


def explain_overlay(client: ServingClient, name: str, png: bytes) -> str:
    """A data: URI of the upload (at the model's input size) under its Grad-CAM heat map."""
    heat = client.predict(name, png, signature="explain").outputs["heatmap"][0]
    size = heat.shape[:2]
    base = Image.open(io.BytesIO(png)).convert("RGB").resize((size[1], size[0]))
    display = 256 if max(size) < 256 else max(size)
    colours = (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)
    overlay = Image.blend(base, Image.fromarray(colours), alpha=0.45).resize((display, display), Image.BILINEAR)
    buf = io.BytesIO()
    overlay.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
