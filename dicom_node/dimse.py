"""The node's DICOM door: a C-STORE SCP (pynetdicom) for the image classes the product reads.

An association must name the node's AE title (a PACS configured for another node is refused
at association, before any data), at most ``max_associations`` run at once (more are refused
with "local limit exceeded"), and PDUs are at most ``max_pdu`` bytes. Each instance is taken
as the bytes the peer sent (``encoded_dataset``: not decoded, not copied into a pydicom
dataset), checked by admission and held by the inbox; the C-STORE answer says which.
"""
from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_node import admission
from dicom_node.inbox import Inbox, OutOfResources

log = logging.getLogger("dicom_node")


def storage_ae(ae_title: str, max_associations: int, max_pdu: int, timeout_s: float = 30) -> AE:
    """The SCP's application entity: storage contexts for the product's image classes in the
    transfer syntaxes components.imaging.dicom decodes, and Verification (C-ECHO) for PACS set-up."""
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in admission.STORAGE_CLASSES:
        ae.add_supported_context(sop_class, list(admission.TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    return ae


def start(ae: AE, host: str, port: int, inbox: Inbox):
    """The SCP serving in its own threads (``.shutdown()`` stops it; port 0 picks one)."""
    handlers = [(evt.EVT_C_STORE, _on_store, [inbox]), (evt.EVT_REJECTED, _on_rejected),
                (evt.EVT_ACCEPTED, _on_accepted)]
    return ae.start_server((host, port), block=False, evt_handlers=handlers)


def _on_store(event, inbox: Inbox) -> Dataset:
    peer = event.assoc.requestor
    try:
        instance = admission.admit(event.encoded_dataset(include_meta=True))
        inbox.add(instance)
    except admission.Refused as e:
        log.warning("C-STORE from %s refused (0x%04X): %s", peer.ae_title, e.status, e.reason)
        return _status(e.status, e.reason)
    except OutOfResources as e:
        log.warning("C-STORE from %s refused (0xA700): %s", peer.ae_title, e)
        return _status(admission.OUT_OF_RESOURCES, "out of resources: the node's memory budget is full")
    except Exception as e:        # never let a handler error end the association without an answer
        log.exception("C-STORE from %s failed", peer.ae_title)
        return _status(admission.CANNOT_UNDERSTAND, f"{type(e).__name__}")
    log.info("received instance %s (study %s, %s, %s bytes) by C-STORE from %s", instance.tag, instance.study_tag,
             UID(instance.sop_class_uid).name, f"{len(instance.data):,}", peer.ae_title)
    return _status(admission.SUCCESS)


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]       # LO: 64 characters
    return status


def _on_accepted(event) -> None:
    log.info("association from %s (%s) accepted", event.assoc.requestor.ae_title, event.assoc.requestor.address)


def _on_rejected(event) -> None:
    log.warning("association from %s (%s) rejected", event.assoc.requestor.ae_title, event.assoc.requestor.address)
