"""HTML pages (people): home, a hub per modality, a page per model, a compare page per cohort,
and the cross-modality results. Errors are shown inline on the page the person was on."""
from __future__ import annotations

from flask import Blueprint, abort, g, render_template, request, send_file

from components.core.artifacts import PICTURES
from gateway import errors, operating, service
from gateway.state import current

blueprint = Blueprint("pages", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")
METRIC_NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "precision": "Precision",
                "recall": "Sensitivity (recall)", "specificity": "Specificity", "f1": "F1", "roc_auc": "ROC-AUC",
                "pr_auc": "PR-AUC (average precision)", "brier": "Brier score (lower is better)"}


def _render(template: str, status: int = 200, **context):
    deployed = current().deployed
    return render_template(template, modalities=deployed.modalities(), cards=deployed.cards(),
                           sites=deployed.known_sites(),
                           metric_names=METRIC_NAMES, metric_keys=tuple(METRIC_NAMES), **context), status


def _attempt(fn):
    """Run a prediction; on failure return (None, status, message) for the inline banner."""
    try:
        return fn(), 200, None
    except errors.HANDLED as e:
        problem = errors.describe(e)
        return None, problem.status, problem.message


@blueprint.get("/")
def home():
    return _render("home.html")


@blueprint.get("/modalities/<modality>")
def modality(modality):
    if modality not in current().deployed.modalities():
        abort(404)
    return _render("modality.html", modality=modality)


@blueprint.route("/models/<name>", methods=["GET", "POST"])
def model(name):
    p = current()
    card = p.deployed.card(name)
    if card is None:
        abort(404)
    result, status, message, overlay = None, 200, None, None
    if request.method == "POST":
        def run():
            site = operating.resolve(p.deployed, request.form.get("site"))
            upload = p.read_upload(request, card["image_size"], card["modality"])
            prediction = service.predict(p, name, upload, site)
            p.metrics.predictions.labels(name).inc()
            return prediction, service.explain_overlay(p.client, name, upload.png, prediction["version"])
        outcome, status, message = _attempt(run)
        if outcome:
            result, overlay = outcome
            card = p.deployed.card_of(name, result["version"]) or card      # the card of the version that answered
    pictures = [f for f in PICTURES if p.deployed.picture(name, f)]
    operator = g.identity.has("operator")            # versions and decisions: an operator's business
    return _render("model.html", status, name=name, card=card, result=result, overlay=overlay, error=message,
                   site=_asked_site(),
                   pictures=pictures, labels=p.deployed.labels(name) if operator else None,
                   decisions=p.deployed.decisions(name) if operator else None,
                   site_points=p.deployed.sites(name) if operator else None)


@blueprint.route("/cohorts/<modality>/<strategy>", methods=["GET", "POST"])
def cohort(modality, strategy):
    p = current()
    names = p.deployed.cohort(modality, strategy)
    if not names:
        abort(404)
    result, status, message = None, 200, None
    if request.method == "POST":
        def run():
            site = operating.resolve(p.deployed, request.form.get("site"))
            upload = p.read_upload(request, max(p.deployed.card(n)["image_size"] for n in names), modality)
            return service.compare(p, names, upload, site)
        result, status, message = _attempt(run)
    return _render("compare.html", status, modality=modality, strategy=strategy, names=names, result=result,
                   error=message, site=_asked_site())


def _asked_site() -> str:
    """The site field as the person left it (kept selected for the next image)."""
    return request.form.get("site", "") if request.method == "POST" else ""


@blueprint.get("/results")
def results():
    return _render("results.html")


@blueprint.get("/models/<name>/pictures/<filename>")
def picture(name, filename):
    path = current().deployed.picture(name, filename)
    if path is None:
        abort(404)
    return send_file(path, mimetype="image/png", max_age=300)


@blueprint.app_errorhandler(404)
def not_found(e):
    if request.path.startswith("/api/"):
        return {"error": f"no such endpoint: {request.path}", "status": 404}, 404
    if request.path == "/v2" or request.path.startswith("/v2/"):
        return {"error": f"no such endpoint: {request.path}"}, 404
    return _render("error.html", 404, error="There is no such page. Pick a modality or model from the menu.")


@blueprint.app_errorhandler(413)
def too_large(e):
    message = f"The upload is larger than the limit of {current().config.max_upload_bytes:,} bytes."
    if request.path.startswith("/api/"):
        return {"error": message, "status": 413}, 413
    if request.path.startswith("/v2/"):
        return {"error": message}, 413
    return _render("error.html", 413, error=message)
