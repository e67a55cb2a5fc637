"""Which operating point an answer uses: a site's accepted profile (``serving.sites``) or the
model's own, and the probability and label at it.

A site is asked for explicitly (``?site=`` on /api/v1, ``"parameters": {"site": ...}`` on v2,
the pages' site field, the DICOM node's mapping); the gateway never guesses it. A site's profile
applies only to the version it was accepted for: when another version answers (a promotion or a
canary since the acceptance), the answer is at the model's own operating point and says why,
since that version's threshold was never checked on the site's images. A site that no deployed
model has ever had a profile for is a 400 naming the known ones; a known site without a profile
in effect for a model (never accepted for it, or revoked) gets the model's own.

At a site's profile: probability' = sigmoid(logit(p) / T) (temperature scaling of the served,
already calibrated, probability), label = probability' >= threshold. The model's own point is
temperature 1 (the served probability unchanged) at the threshold the version answered with.
"""
from __future__ import annotations

import math

from serving.sites import SITE

# probabilities are clipped this far from 0 and 1 before the logit: a float32 1.0 has no logit
_EPSILON = 1e-7


class UnknownSite(Exception):
    """A site no deployed model has a profile for (or not a site name at all): a 400."""


def resolve(deployed, site: str | None) -> str | None:
    """The site asked for, checked against the ones the repository knows; None for no site."""
    if site is None or site == "":
        return None
    known = deployed.known_sites()
    if not isinstance(site, str) or not SITE.fullmatch(site) or site not in known:
        shown = repr(site)[:40] if isinstance(site, str) else type(site).__name__
        raise UnknownSite(f"unknown site {shown}; known sites: {', '.join(known) or 'none (no profile was accepted)'}")
    return site


def point(deployed, name: str, version: int, site: str | None, model_threshold: float) -> dict:
    """The operating point ``name`` version ``version`` answers at for ``site``."""
    own = {"site": None, "version": version, "temperature": 1.0, "threshold": round(float(model_threshold), 6),
           "acceptance_sha256": None}
    if site is None:
        return {**own, "reason": "no site asked: the model's own operating point"}
    profile = deployed.sites(name).get(site)
    if profile is None:
        return {**own, "reason": f"no profile of {name} is in effect for site {site}: the model's own operating point"}
    if profile["version"] != version:
        return {**own, "reason": f"site {site}'s profile is for version {profile['version']}, and version {version} "
                                 "answered (not accepted at that site): the model's own operating point"}
    return {"site": site, "version": version, "temperature": float(profile["temperature"]),
            "threshold": float(profile["threshold"]), "acceptance_sha256": profile["acceptance_sha256"],
            "reason": f"site {site}'s accepted profile for version {version}"}


def apply(operating_point: dict, probability: float, label: int) -> tuple[float, int]:
    """(probability, label) at ``operating_point``; the model's own keeps the served label (the
    graph's comparison, not a float32 one redone here)."""
    if operating_point["site"] is None:
        return probability, label
    p = min(max(probability, _EPSILON), 1 - _EPSILON)
    scaled = 1 / (1 + math.exp(-math.log(p / (1 - p)) / operating_point["temperature"]))
    return scaled, int(scaled >= operating_point["threshold"])


def parameters(operating_point: dict) -> dict:
    """The operating point as OIP response parameters (scalars only, null ones left out)."""
    return {f"operating_point_{k}": v for k, v in operating_point.items() if v is not None}
