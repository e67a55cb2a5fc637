"""The node's outgoing HTTPS hops (the gateway, a DICOMweb PACS): the hospital's CA trusted and
the node's own certificate presented."""
from __future__ import annotations

import requests
import requests.adapters

from components.core.tls import TLSFiles


class _TLSAdapter(requests.adapters.HTTPAdapter):
    """Every request sent with the configured CA and certificate: requests lets the environment's
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (set on many hosts) take precedence over a configured
    ``verify``, and the peer would then be trusted on the system's authorities, not the hospital's."""

    def __init__(self, verify: str | bool, cert: tuple[str, str] | None):
        super().__init__()
        self.verify, self.cert = verify, cert

    def send(self, request, **kwargs):
        return super().send(request, **{**kwargs, "verify": self.verify, "cert": self.cert})


def with_tls(s: requests.Session | None, tls: TLSFiles | None) -> requests.Session | None:
    """``s`` (or a new ``requests.Session``) trusting ``tls.ca`` and presenting ``tls.cert`` where given."""
    if tls is None:
        return s
    s = s or requests.Session()
    if tls.ca:
        s.verify = str(tls.ca)
    if tls.cert:
        s.cert = (str(tls.cert), str(tls.key))
    s.mount("https://", _TLSAdapter(s.verify, s.cert))
    return s
