"""One map from what can go wrong in a request to its HTTP status, message and headers, shared
by the JSON API and the pages' inline banners. Messages say what was wrong and what to do, and
never show internal addresses (those go to the log)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.state import current
from gateway.uploads import UploadError
from serving.client import ServingRejected, ServingUnavailable

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


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
        if e.code.name == "UNAVAILABLE":            # queue full, or a version being unloaded
            return Problem(503, f"The model server is busy ({e}); try again shortly.",
                           {"Retry-After": str(RETRY_AFTER_S)})
        status = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}.get(e.code.name, 502)
        return Problem(status, f"The model server refused the request: {e}")
    if isinstance(e, NotDeployed):
        names = sorted(current().deployed.cards())
        return Problem(404, f"{e}; deployed: {', '.join(names) or 'none'}")
    raise e


HANDLED = (UploadError, ServingUnavailable, ServingRejected, NotDeployed)
