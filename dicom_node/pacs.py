"""Where the node files its reports: the PACS, by DICOMweb STOW-RS or by DICOM C-STORE.

``--store-to dicomweb URL`` posts every SR of a study in one STOW-RS request (dicomweb-client);
``--store-to dimse HOST:PORT:AET`` sends them over one association, the node's AE title as the
calling one (the PACS knows the node by it). Either way an instance the PACS did not take is a
Transient error for the caller to retry; SRs it already took are taken again harmlessly (same
SOP Instance UIDs).

Reports hold PHI, so both ways are encrypted: HTTPS trusting the hospital's CA (``--pacs-tls-ca``,
else the system's), DICOM TLS with that CA; either presents the node's certificate where given.
A plaintext PACS (an ``http://`` URL, DIMSE without TLS) is refused unless the operator says
``--allow-plaintext-pacs``, and then warned of in the log.
"""
from __future__ import annotations

import logging

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pynetdicom import AE

from components.core.tls import TLSFiles
from dicom_node.report import Store, Transient
from dicom_node.sessions import with_tls

log = logging.getLogger("dicom_node")

# C-STORE statuses that mean "stored": success, and the warnings (coercion, elements discarded)
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


def session(auth: str) -> requests.Session | None:
    """The credentials the PACS requires (``--pacs-auth``): ``basic:USER:PASSWORD_FILE``,
    ``bearer:TOKEN_FILE``, or ``none`` (an anonymous PACS, said so explicitly)."""
    from pathlib import Path

    from dicomweb_client.session_utils import create_session_from_auth

    kind, _, rest = auth.partition(":")
    if kind == "none" and not rest:
        return None
    if kind == "basic" and rest.count(":") >= 1:
        user, _, path = rest.partition(":")
        return create_session_from_auth(requests.auth.HTTPBasicAuth(user, Path(path).read_text().strip()))
    if kind == "bearer" and rest:
        token = Path(rest).read_text().strip()
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        return s
    raise ValueError("--pacs-auth: basic:USER:PASSWORD_FILE, bearer:TOKEN_FILE or none")


class DicomWebStore:
    def __init__(self, url: str, timeout_s: float = 60.0, session: requests.Session | None = None):
        self.url, self.timeout_s, self.session = url.rstrip("/"), timeout_s, session

    def put(self, datasets: list[pydicom.Dataset]) -> None:
        client = DICOMwebClient(self.url, timeout=self.timeout_s, session=self.session)
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as e:
            raise Transient(f"STOW-RS to the PACS answered {e.response.status_code if e.response is not None else '?'}")
        except requests.RequestException as e:
            raise Transient(f"the PACS did not answer STOW-RS ({type(e).__name__})") from None
        failed = response.get("FailedSOPSequence") or []
        if failed:
            reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
            raise Transient(f"the PACS refused {len(failed)} of {len(datasets)} report(s): {', '.join(reasons)}")

    def __str__(self) -> str:
        return f"DICOMweb {self.url}"


class DimseStore:
    def __init__(self, host: str, port: int, called_aet: str, calling_aet: str, timeout_s: float = 60.0,
                 tls: TLSFiles | None = None):
        self.host, self.port, self.called_aet, self.calling_aet = host, port, called_aet, calling_aet
        self.timeout_s, self.tls = timeout_s, tls

    def put(self, datasets: list[pydicom.Dataset]) -> None:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets}
                          | {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian})
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, syntaxes)
        # the PACS's certificate must name the host dialled; a context per store picks up renewed files
        tls_args = (self.tls.client_context(), self.host) if self.tls else None
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, tls_args=tls_args)
        if not assoc.is_established:
            raise Transient(f"the PACS {self.called_aet}@{self.host}:{self.port} did not accept an association")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else None
                if code is None:
                    raise Transient("the association ended before the PACS answered a C-STORE")
                if code not in STORED:
                    raise Transient(f"the PACS answered C-STORE with status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()

    def __str__(self) -> str:
        return f"DIMSE{' over TLS' if self.tls else ''} {self.called_aet}@{self.host}:{self.port}"


def store_to(kind: str, target: str, calling_aet: str, auth: str | None = None, tls: TLSFiles | None = None,
             allow_plaintext: bool = False) -> Store:
    """``--store-to dicomweb URL`` (with ``--pacs-auth``) or ``--store-to dimse HOST:PORT:AET``,
    ``tls`` from ``--pacs-tls-*``."""
    if kind == "dicomweb":
        if not target.startswith(("http://", "https://")):
            raise ValueError(f"--store-to dicomweb needs an https URL, not {target!r}")
        if auth is None:
            raise ValueError("--store-to dicomweb needs --pacs-auth: basic:USER:PASSWORD_FILE, bearer:TOKEN_FILE, "
                             "or none for a PACS that takes anonymous writes")
        if target.startswith("http://"):
            if tls:
                raise ValueError("--pacs-tls-* given with an http:// PACS URL: give its https:// URL")
            _plaintext(target, allow_plaintext)
        return DicomWebStore(target, session=with_tls(session(auth), tls))
    if kind == "dimse":
        try:
            host, port, aet = target.rsplit(":", 2)
            store = DimseStore(host, int(port), aet, calling_aet, tls=tls)
        except ValueError:
            raise ValueError(f"--store-to dimse needs HOST:PORT:AET, not {target!r}") from None
        if tls is None:
            _plaintext(f"DIMSE {target}", allow_plaintext)
        return store
    raise ValueError(f"--store-to {kind!r}: choose dicomweb URL or dimse HOST:PORT:AET")


def _plaintext(target: str, allowed: bool) -> None:
    if not allowed:
        raise ValueError(f"the PACS {target} would be reached unencrypted, and reports name patients: give its "
                         "https:// URL (DIMSE: --pacs-tls-ca, the hospital's CA), or --allow-plaintext-pacs for a "
                         "PACS on this host")
    log.warning("REPORTS GO TO THE PACS UNENCRYPTED (--allow-plaintext-pacs): %s; anyone on the network path can "
                "read them. Use only for a PACS on this host", target)
