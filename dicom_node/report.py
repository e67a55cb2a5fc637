"""What the node does with a quiet study: ask the gateway about each image, file the reports.

Each instance goes, as it came (Part 10), to the gateway's compare endpoint for its modality
(``POST /api/v1/cohorts/<modality>/<strategy>:compare``, ``Accept: application/dicom``), which
answers the TID 1500 SR; with ``?site=`` where its sender or institution is mapped to a site
(``dicom_node.sites``), so the SR is at that site's accepted operating point. Nothing half-done becomes visible in the PACS:
- each SR is checked before it is kept: an SR, in the image's study, referencing the image;
- a study's SRs are stored only once every instance has an SR or a final refusal (a 4xx: the
  gateway will never read that image, so it is logged with the reason and left out); when a
  gateway error outlasts the retries, nothing of the study is stored;
- the same SR objects (the same SOP Instance UIDs) are sent again when a store is retried, so a
  store that failed halfway is completed by its retry, never duplicated.
Failures are retried ``retries`` times with a doubling delay (a gateway's ``Retry-After`` is
honoured up to a minute). Logs name instances by the hash of their UID, never patients.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import pydicom
import requests

from components.core.tls import TLSFiles
from dicom_node.inbox import Batch, Instance
from dicom_node.sessions import with_tls
from dicom_node.sites import SiteMap

log = logging.getLogger("dicom_node")
DICOM = "application/dicom"
RETRY_AFTER_CAP_S = 60.0


class Store(Protocol):
    """Files SRs in the PACS (dicom_node.pacs); raises Transient when it could not."""
    def put(self, datasets: list[pydicom.Dataset]) -> None: ...


class Permanent(Exception):
    """Asking again will not help (the gateway refused the image, or answered no usable SR)."""


class Transient(Exception):
    """It may work next time (the gateway or the PACS unavailable, a timeout, a 5xx)."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 4                 # the first try and three retries
    delay_s: float = 2.0              # before the first retry, doubled after each
    sleep: Callable[[float], None] = time.sleep

    def run(self, what: str, call: Callable[[], object]):
        """``call()``; a Transient is retried, the last one (or a Permanent) raised."""
        delay = self.delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except Transient as e:
                if attempt == self.attempts:
                    raise
                wait = max(delay, getattr(e, "retry_after", 0.0))
                log.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s", what, attempt, self.attempts, wait, e)
                self.sleep(wait)
                delay *= 2


class Reporter:
    def __init__(self, gateway: str, strategies: dict[str, str], store: Store, retry: Retry = Retry(),
                 timeout_s: float = 60.0, credentials=None, tls: TLSFiles | None = None, sites: SiteMap = SiteMap()):
        self.gateway, self.strategies, self.store, self.sites = gateway.rstrip("/"), strategies, store, sites
        self.retry, self.timeout_s, self.tls = retry, timeout_s, tls   # tls: an https gateway's CA (and the node's cert)
        self.credentials = credentials        # the node's own token (OAuth2 client credentials), or None
        self._local = threading.local()          # a requests.Session per worker: sessions are not thread-safe

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = with_tls(requests.Session(), self.tls)
        return self._local.session

    def __call__(self, batch: Batch) -> list[pydicom.Dataset]:
        """Report on ``batch``: the SRs stored (empty when nothing could be)."""
        reports = []
        for instance in batch.instances:
            try:
                reports.append(self.retry.run(f"asking the gateway about {instance.tag}", lambda: self.ask(instance)))
            except Permanent as e:
                log.error("instance %s (study %s) gets no report: %s", instance.tag, batch.study_tag, e)
            except Transient as e:
                log.error("study %s (batch %d) abandoned, nothing stored: instance %s still failing after %d "
                          "attempts: %s", batch.study_tag, batch.number, instance.tag, self.retry.attempts, e)
                return []
        if not reports:
            return []
        try:
            self.retry.run(f"storing {len(reports)} report(s) of study {batch.study_tag}", lambda: self.store.put(reports))
        except (Transient, Permanent) as e:
            log.error("study %s (batch %d): %d report(s) not stored after %d attempts: %s", batch.study_tag,
                      batch.number, len(reports), self.retry.attempts, e)
            return []
        log.info("study %s (batch %d): stored %d report(s) for %d instance(s) to %s", batch.study_tag, batch.number,
                 len(reports), len(batch.instances), self.store)
        return reports

    def ask(self, instance: Instance) -> pydicom.Dataset:
        """The gateway's SR on ``instance``, checked."""
        strategy = self.strategies.get(instance.modality)
        if strategy is None:
            raise Permanent(f"no strategy is configured for {instance.modality}")
        url = f"{self.gateway}/api/v1/cohorts/{instance.modality}/{strategy}:compare"
        site = self.sites.site_for(instance)
        try:
            identity = self.credentials.header() if self.credentials else {}
        except (OSError, ValueError, KeyError) as e:
            raise Transient(f"the identity provider gave the node no token ({type(e).__name__})") from None
        try:
            answer = self.session.post(url, data=instance.data, timeout=self.timeout_s, params={"site": site} if site else None,
                                       headers={"Content-Type": DICOM, "Accept": DICOM, **identity})
        except requests.RequestException as e:
            raise Transient(f"the gateway did not answer ({type(e).__name__})") from None
        _raise_for(answer)
        kind = answer.headers.get("Content-Type", "").split(";")[0].strip()
        if kind != DICOM:
            raise Permanent(f"the gateway answered {kind or 'no content type'}, not a DICOM SR "
                            "(does it serve Accept: application/dicom?)")
        return checked_sr(answer.content, instance)


def _raise_for(answer: requests.Response) -> None:
    if answer.status_code < 300:
        return
    reason = _error_text(answer)
    if 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
        raise Permanent(f"the gateway refused it ({answer.status_code}): {reason}")
    error = Transient(f"the gateway answered {answer.status_code}: {reason}")
    try:
        error.retry_after = min(float(answer.headers.get("Retry-After", 0)), RETRY_AFTER_CAP_S)
    except ValueError:
        pass
    raise error


def _error_text(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("error", ""))[:300]
    except ValueError:
        return answer.text[:300]


def checked_sr(data: bytes, instance: Instance) -> pydicom.Dataset:
    """``data`` as an SR, once it is one, in the image's study, referencing the image: a report
    filed into the wrong study, or about another image, would mislead whoever reads it."""
    try:
        sr = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:
        raise Permanent(f"the gateway's answer is not DICOM ({type(e).__name__})") from None
    if "SR" not in pydicom.uid.UID(str(sr.get("SOPClassUID", ""))).name.split():
        raise Permanent("the gateway's answer is not a Structured Report")
    if sr.get("StudyInstanceUID") != instance.study_uid:
        raise Permanent("the gateway's SR is not in the image's study")
    if instance.sop_instance_uid not in referenced_instances(sr):
        raise Permanent("the gateway's SR does not reference the image")
    return sr


def referenced_instances(sr: pydicom.Dataset) -> set[str]:
    """The SOP Instance UIDs in the SR's evidence (Current Requested Procedure Evidence)."""
    return {str(sop.ReferencedSOPInstanceUID)
            for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for sop in series.get("ReferencedSOPSequence", [])}
