"""One acceptance, start to end: read, score, split, choose, measure, decide, write."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.core import catalog, cli, phi
from components.core.tls import TLSFiles
from components.data.sources import Source
from serving.client import ServingClient, ServingRejected, ServingUnavailable

from pipelines.site import acceptance, calibration, figures, intake, report, scoring, sizing, verdict
from pipelines.site.progress import say
from pipelines.site.split import split_patients


@dataclass(frozen=True)
class Request:
    site: str
    model: str
    version: int | None
    label: str | None
    serving: str
    tls: TLSFiles | None
    deadline_s: float
    modality: str
    sources: list[Source]
    key: bytes
    max_pixels: int
    fraction: float
    seed: int
    target: calibration.Target
    floors: verdict.Floors
    rule: sizing.Rule
    bootstrap: int
    out: Path


def run(request: Request) -> dict:
    site = intake.read(request.sources, request.modality, request.key, request.max_pixels)
    if not site.pngs:
        raise cli.UserError(f"no image of {', '.join(s.path for s in request.sources)} could be read "
                            f"({len(site.quarantined)} set aside)")
    served = _score(request, site.pngs)
    scores = acceptance.Scores(np.array(site.labels, int), served.probability, site.patients, served.threshold)
    split = split_patients(site.patients, scores.y, request.fraction, request.seed)
    say(f"split: {len(split.calibration)} patients to calibrate, {len(split.verification)} to verify")
    measured = acceptance.measure(scores, split, request.target, request.bootstrap, request.seed)
    declared_sensitivity, declared_specificity = _declared(request)
    enough = sizing.check(request.rule, declared_sensitivity, declared_specificity,
                          measured["counts"]["verification"], measured["counts"]["calibration"], request.fraction)
    decided = verdict.decide(measured, request.floors, enough)
    profile = None
    if decided["decision"] == verdict.ACCEPT:
        profile = {"site": request.site, "model": request.model, "version": served.version,
                   "temperature": measured["choice"]["temperature"], "threshold": measured["choice"]["threshold"],
                   "target": request.target.as_dict()}
    body = {
        "site": request.site,
        "model": {"name": request.model, "version": served.version, "served_by": request.serving,
                  "asked_for": f"version {request.version}" if request.version is not None
                  else f"label {request.label}" if request.label else "the latest version",
                  "threshold": served.threshold},
        "modality": request.modality,
        "images": {"scored": len(site.pngs), "quarantined": len(site.quarantined), "quarantine": site.quarantined},
        "pseudonyms": {"method": f"HMAC-SHA256, {phi.DIGITS} hex digits", "key_id": phi.key_id(request.key)},
        "split": {"seed": request.seed, "calibration_fraction": request.fraction, "stratified_by": "patient label",
                  "counts": measured["counts"], "calibration": list(split.calibration),
                  "verification": list(split.verification)},
        "declared": {"target": request.target.as_dict(), "floors": request.floors.declared(),
                     "floors_apply_to": "the lower end of each 95% patient-bootstrap interval"},
        "choice": measured["choice"],
        "verification": measured["verification"],
        "detectable_auc_difference": measured["detectable_auc_difference"],
        "enough_patients": enough,
        "verdict": decided,
        "profile": profile,
    }
    pictures = _figures(request, scores, split, measured)
    path, digest = report.write(request.out, body, pictures)
    written = {"report": str(path), "page": str(request.out / report.PAGE)}
    if profile:
        written["profile"] = str(report.write_profile(request.out, profile, path, digest))
    return {**body, "written": written, "report_sha256": digest}


def _score(request: Request, pngs: list[bytes]) -> scoring.Served:
    client = ServingClient(request.serving, deadline_s=request.deadline_s, tls=request.tls)
    try:
        return scoring.score(client, request.model, pngs, request.version, request.label)
    except ServingUnavailable as e:
        raise cli.UserError(str(e)) from None
    except ServingRejected as e:
        raise cli.UserError(f"the model server refused {request.model}: {e}") from None
    except RuntimeError as e:         # answers that cannot be judged together (scoring says why)
        raise cli.UserError(str(e)) from None
    finally:
        client.channel.close()


def _declared(request: Request) -> tuple[float | None, float | None]:
    """The sensitivity and specificity the site declares: its target, else its floor."""
    target = request.target
    sensitivity = target.value if target.measure == "sensitivity" else request.floors.sensitivity
    specificity = target.value if target.measure == "specificity" else request.floors.specificity
    return sensitivity, specificity


def _figures(request: Request, scores: acceptance.Scores, split, measured: dict) -> dict[str, bytes]:
    if measured["verification"] is None:
        return {}
    _, ver = split.masks(scores.patients)
    choice = measured["choice"]
    patients = [p for p, keep in zip(scores.patients, ver) if keep]
    return figures.draw(scores.y[ver], scores.p[ver], patients, scores.model_threshold,
                        catalog.modality(request.modality).label_names, request.model,
                        acceptance.site_probabilities(scores.p[ver], choice), choice and choice["threshold"])
