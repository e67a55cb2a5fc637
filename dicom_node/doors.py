"""Who may send the node images, and what it records of them.

- C-STORE: only the calling AE titles configured as senders, each optionally from its own
  addresses (as Orthanc's ``DicomModalities`` with ``DicomCheckModalityHost``). An unknown title
  is rejected at association, before any data; a known title from another address has its
  association aborted as soon as it is established.
- STOW-RS: a bearer token from the hospital's identity provider, verified as the gateway verifies
  it (``components.core.identity``), carrying the clinician role (the images are sent to be read).
- Every instance received, taken or refused, is one event of the access audit
  (``components.core.audit``): the sender (AE title or token subject), its address, the outcome,
  and the study and instance as keyed pseudonyms.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Mapping

from components.core import audit, identity, phi

log = logging.getLogger("dicom_node")
STOW_ROLE = "clinician"


def parse_senders(values: list[str]) -> dict[str, frozenset[str]]:
    """``--sender AET`` or ``--sender AET=HOST[,HOST...]``: who may C-STORE to the node."""
    senders: dict[str, frozenset[str]] = {}
    for value in values:
        title, _, hosts = value.partition("=")
        title = title.strip()
        if not 1 <= len(title) <= 16 or "\\" in title:
            raise ValueError(f"--sender {value!r}: an AE title is 1 to 16 characters")
        senders[title] = frozenset(h.strip() for h in hosts.split(",") if h.strip())
    return senders


@dataclass
class Doors:
    """The node's admission of peers, and its audit (one per node)."""
    senders: Mapping[str, frozenset[str]]                 # calling AE title -> addresses (empty: any)
    verifier: identity.TokenVerifier | None = None        # None: STOW-RS unauthenticated (--auth none)
    log: audit.ChainedLog | None = None
    phi_key: bytes = field(default=b"", repr=False)

    def admits(self, calling_aet: str, address: str) -> bool:
        allowed = self.senders.get(calling_aet.strip())
        return allowed is not None and (not allowed or address in allowed)

    def stow_identity(self, authorization: str | None) -> identity.Identity:
        """The STOW-RS caller, or Unauthorized / Forbidden."""
        if self.verifier is None:
            return identity.DEVELOPER
        who = self.verifier.verify(identity.bearer(authorization))
        who.require(STOW_ROLE)
        return who

    def pseudonym(self, kind: str, uid: str | None) -> str | None:
        return phi.pseudonym(self.phi_key, kind, uid) if uid and self.phi_key else None

    def record(self, subtype: str, who: str, roles, address: str | None, status: int, *, verified: bool = True,
               study_uid: str | None = None, instance_uid: str | None = None, detail: str | None = None,
               kind: str = "dicom") -> None:
        if self.log is None:
            return
        self.log.append(audit.event(subtype=subtype, who=who, roles=list(roles), address=address,
                                    observer="dicom-node", status=status, request_id=uuid.uuid4().hex,
                                    action="C", verified=verified, study=self.pseudonym("study", study_uid),
                                    instance=self.pseudonym("instance", instance_uid), kind=kind, detail=detail))
