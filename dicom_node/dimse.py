"""The node's DICOM door: a C-STORE SCP (pynetdicom) for the image classes the product reads.

An association must name the node's AE title (a PACS configured for another node is refused
at association, before any data) and come from a configured sender (``dicom_node.doors``: an
unknown calling AE title is rejected at association; a known one from another address is aborted
once established), at most ``max_associations`` run at once (more are refused
with "local limit exceeded"), and PDUs are at most ``max_pdu`` bytes. Each instance is taken
as the bytes the peer sent (``encoded_dataset``: not decoded, not copied into a pydicom
dataset), checked by admission and held by the inbox; the C-STORE answer says which.

With a TLS context the door speaks DICOM TLS (PS3.15 B.1) only; with the context's CA set, a
sender without a certificate from it is refused before any DICOM is read. pynetdicom would do the
handshake on its one accepting thread, without a timeout, so one peer that connects and says
nothing would shut the door for every sender; ``_TLSServer`` does it on the connection's own
thread, bounded by the network timeout, and logs and audits a failed one.
"""
from __future__ import annotations

import logging
import ssl
import threading

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import admission
from dicom_node.doors import Doors
from dicom_node.inbox import Inbox, OutOfResources

log = logging.getLogger("dicom_node")


def storage_ae(ae_title: str, max_associations: int, max_pdu: int, senders, timeout_s: float = 30) -> AE:
    """The SCP's application entity: storage contexts for the product's image classes in the
    transfer syntaxes components.imaging.dicom decodes, and Verification (C-ECHO) for PACS set-up;
    only ``senders`` (calling AE titles) are accepted."""
    if not senders:
        raise ValueError("the node admits C-STORE only from configured senders: give at least one --sender AET")
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = sorted(senders)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in admission.STORAGE_CLASSES:
        ae.add_supported_context(sop_class, list(admission.TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    return ae


def start(ae: AE, host: str, port: int, inbox: Inbox, doors: Doors, tls: ssl.SSLContext | None = None):
    """The SCP serving in its own threads (``.shutdown()`` stops it; port 0 picks one); over
    DICOM TLS with ``tls`` (a server context: ``components.core.tls.TLSFiles.server_context``)."""
    handlers = [(evt.EVT_C_STORE, _on_store, [inbox, doors]), (evt.EVT_REJECTED, _on_rejected, [doors]),
                (evt.EVT_ACCEPTED, _on_accepted, [doors])]
    if tls is None:
        return ae.start_server((host, port), block=False, evt_handlers=handlers)
    server = ae.make_server((host, port), ssl_context=tls, evt_handlers=handlers, server_class=_TLSServer)
    server.doors = doors
    ae._servers.append(server)        # as ae.start_server does: the server's shutdown() takes itself off it
    threading.Thread(target=server.serve_forever, daemon=True, name="dicom-node-c-store").start()
    return server


class _TLSServer(ThreadedAssociationServer):
    """pynetdicom's server with the TLS handshake moved off the accepting thread."""
    doors: Doors
    daemon_threads = True       # stopping the node waits for no peer still in its handshake

    def get_request(self):
        client, address = self.socket.accept()
        client.settimeout(self.ae.network_timeout)      # a silent peer holds its own thread, for this long
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def process_request_thread(self, request, client_address) -> None:
        try:
            request.do_handshake()
        except (OSError, ValueError) as e:        # ssl.SSLError, a timeout, a reset: no association
            reason = getattr(e, "reason", None) or getattr(e, "verify_message", None) or type(e).__name__
            log.warning("TLS handshake from %s failed, connection closed: %s", client_address[0], reason)
            self.doors.record("association", "unknown", [], client_address[0], 403, verified=False,
                              detail=f"TLS handshake failed: {reason}")
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def _on_store(event, inbox: Inbox, doors: Doors) -> Dataset:
    peer = event.assoc.requestor
    sender = peer.ae_title.strip()

    def record(status: int, instance=None, detail: str | None = None):
        doors.record("c-store", sender, [], peer.address, status, study_uid=instance and instance.study_uid,
                     instance_uid=instance and instance.sop_instance_uid, detail=detail)
    try:
        instance = admission.admit(event.encoded_dataset(include_meta=True), sender)
        inbox.add(instance)
    except admission.Refused as e:
        log.warning("C-STORE from %s refused (0x%04X): %s", sender, e.status, e.reason)
        record(400, detail=f"refused 0x{e.status:04X}")
        return _status(e.status, e.reason)
    except OutOfResources as e:
        log.warning("C-STORE from %s refused (0xA700): %s", sender, e)
        record(503, detail="out of resources")
        return _status(admission.OUT_OF_RESOURCES, "out of resources: the node's memory budget is full")
    except Exception as e:        # never let a handler error end the association without an answer
        log.exception("C-STORE from %s failed", sender)
        record(500, detail=type(e).__name__)
        return _status(admission.CANNOT_UNDERSTAND, f"{type(e).__name__}")
    log.info("received instance %s (study %s, %s, %s bytes) by C-STORE from %s", instance.tag, instance.study_tag,
             UID(instance.sop_class_uid).name, f"{len(instance.data):,}", sender)
    record(200, instance)
    return _status(admission.SUCCESS)


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]       # LO: 64 characters
    return status


def _on_accepted(event, doors: Doors) -> None:
    peer = event.assoc.requestor
    if not doors.admits(peer.ae_title, peer.address):       # a known title from an address not its own
        log.warning("association from %s (%s) aborted: not an address configured for that sender",
                    peer.ae_title, peer.address)
        doors.record("association", peer.ae_title.strip(), [], peer.address, 403,
                     detail="calling AE title from an address not configured for it")
        event.assoc.abort()
        return
    log.info("association from %s (%s) accepted", peer.ae_title, peer.address)


def _on_rejected(event, doors: Doors) -> None:
    peer = event.assoc.requestor
    log.warning("association from %s (%s) rejected", peer.ae_title, peer.address)
    doors.record("association", peer.ae_title.strip(), [], peer.address, 403, detail="association rejected")
