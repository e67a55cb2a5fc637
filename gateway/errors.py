"""One map from what can go wrong in a request to its HTTP status, message and headers, shared
by the JSON API and the pages' inline banners. Messages say what was wrong and what to do, and
never show internal addresses, the model server's own text or anything of the image's header
(those go to the log, PHI never)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.operating import UnknownSite
from gateway.state import current
from gateway.uploads import UploadError
from serving.client import ServingRejected, ServingUnavailable

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


REJECTED = {"NOT_FOUND": (404, "The model server does not serve that model or version (yet)."),
            "INVALID_ARGUMENT": (400, "The model server could not use that image.")}


class NotDeployed(Exception):
    pass


@dataclass(frozen=True)
class Problem:
    status: int
    message: str
    headers: dict = field(default_factory=dict)


def describe(e: Exception) -> Problem:
    """The answer for an error raised while handling a request (counted in the metrics)."""
    metrics = current().metrics
    if isinstance(e, UploadError):
        metrics.rejected.labels(str(e.status)).inc()
        return Problem(e.status, f"That file could not be used: {e}")
    if isinstance(e, ServingUnavailable):
        metrics.unavailable.inc()
        log.warning("model server unavailable: %s", e)
        return Problem(503, "The model server is unavailable right now; try again shortly.",
                       {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, ServingRejected):
        # the model server's own words go to the log only: they may name paths, versions or
        # values the client has no business seeing
        log.warning("model server answered %s: %s", e.code.name, e)
        if e.code.name == "UNAVAILABLE":            # queue full, or a version being unloaded
            return Problem(503, "The model server is busy; try again shortly.", {"Retry-After": str(RETRY_AFTER_S)})
        status, message = REJECTED.get(e.code.name, (502, "The model server refused the request."))
        return Problem(status, message)
    if isinstance(e, UnknownSite):
        return Problem(400, str(e))
    if isinstance(e, NotDeployed):
        names = sorted(current().deployed.cards())
        return Problem(404, f"{e}; deployed: {', '.join(names) or 'none'}")
    raise e


HANDLED = (UploadError, ServingUnavailable, ServingRejected, NotDeployed, UnknownSite)
