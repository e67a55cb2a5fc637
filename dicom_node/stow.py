"""The node's DICOMweb door: STOW-RS ``POST /studies`` (PS3.18 10.5) and ``GET /healthz``.

The body is ``multipart/related; type="application/dicom"``, one Part 10 instance a part; each
is checked by admission and held by the inbox under the same byte budget as C-STORE. The answer
is the store response of PS3.18 (``application/dicom+json``: Referenced SOP Sequence for what
was taken, Failed SOP Sequence with the Failure Reason for what was not): 200 when every
instance was taken, 202 when some were, 409 when none was. Metadata-and-bulk-data bodies
(``application/dicom+json``) are refused with 415: the node reads Part 10 only. A request needs a
bearer token carrying the clinician role (``dicom_node.doors``): 401 without one, 403 without the
role, before the body is parsed.
"""
from __future__ import annotations

import json
import logging

from pydicom.dataset import Dataset
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request, Response

from components.core.identity import Forbidden, Unauthorized
from dicom_node import admission
from dicom_node.doors import Doors
from dicom_node.inbox import Inbox, OutOfResources

log = logging.getLogger("dicom_node")
DICOM_JSON = "application/dicom+json"


class Malformed(Exception):
    """The body is not the multipart/related message its Content-Type announces."""


def make_app(inbox: Inbox, doors: Doors):
    """The WSGI application of the node's HTTP port."""

    @Request.application
    def app(request: Request) -> Response:
        if request.path == "/healthz":
            return _json({"status": "ok", **inbox.status()}) if request.method == "GET" else _error(405, "use GET")
        if request.path.rstrip("/") == "/studies":
            if request.method != "POST":
                return _error(405, "use POST (STOW-RS)")
            try:
                who = doors.stow_identity(request.headers.get("Authorization"))
            except Unauthorized as e:
                doors.record("stow-rs", "unknown", [], request.remote_addr, 401, detail=str(e), kind="rest")
                response = _error(401, str(e))
                response.headers["WWW-Authenticate"] = 'Bearer realm="bcimaging-dicom-node", error="invalid_token"'
                return response
            except Forbidden as e:
                doors.record("stow-rs", "unknown", [], request.remote_addr, 403, detail=str(e), kind="rest")
                return _error(403, str(e))
            return _store(request, inbox, doors, who)
        return _error(404, "not found: the node answers POST /studies (STOW-RS) and GET /healthz")

    return app


def _store(request: Request, inbox: Inbox, doors: Doors, who) -> Response:
    kind, options = parse_options_header(request.headers.get("Content-Type", ""))
    if kind != "multipart/related" or "boundary" not in options:
        return _error(415, 'send multipart/related; type="application/dicom" with a boundary')
    if options.get("type", "application/dicom") != "application/dicom":
        return _error(415, f"type {options['type']!r}: the node takes Part 10 instances (application/dicom) only")
    try:
        parts = split_multipart(request.get_data(cache=False), options["boundary"])
    except Malformed as e:
        return _error(400, str(e))
    taken, failed = [], []
    for content_type, body in parts:
        outcome = _take(content_type, body, inbox, request.remote_addr)
        (taken if isinstance(outcome, tuple) else failed).append(outcome)
        doors.record("stow-rs", who.subject, sorted(who.roles), request.remote_addr,
                     200 if isinstance(outcome, tuple) else 400, verified=who.verified, kind="rest",
                     instance_uid=outcome[1] if isinstance(outcome, tuple) else None)
    status = 200 if not failed else 202 if taken else 409
    return Response(json.dumps(_store_response(taken, failed).to_json_dict()), status, content_type=DICOM_JSON)


def _take(content_type: str, body: bytes, inbox: Inbox, peer: str | None):
    """(SOP class, SOP instance) when the part was taken, else the Refused saying why."""
    if parse_options_header(content_type)[0] != "application/dicom":
        return admission.Refused(admission.CANNOT_UNDERSTAND, f"a part of type {content_type!r}, not application/dicom")
    try:
        instance = admission.admit(body)
        inbox.add(instance)
    except admission.Refused as e:
        log.warning("STOW-RS part from %s refused (0x%04X): %s", peer, e.status, e.reason)
        return e
    except OutOfResources as e:
        log.warning("STOW-RS part from %s refused (0xA700): %s", peer, e)
        return admission.Refused(admission.OUT_OF_RESOURCES, str(e), instance.sop_class_uid, instance.sop_instance_uid)
    log.info("received instance %s (study %s, %s bytes) by STOW-RS from %s", instance.tag, instance.study_tag,
             f"{len(instance.data):,}", peer)
    return instance.sop_class_uid, instance.sop_instance_uid


def split_multipart(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """The (Content-Type, content) of each part of a multipart body (RFC 2046 5.1.1): a part
    ends at CRLF "--" boundary, so the content is exactly the bytes before that CRLF."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)      # the first delimiter may open the body
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise Malformed("the multipart body has no part or no closing boundary")
    parts = []
    for piece in pieces[1:-1]:
        line_end = piece.find(b"\r\n")
        if line_end < 0 or piece[:line_end].strip(b" \t"):     # only transport padding may follow a boundary
            raise Malformed("a multipart boundary is not followed by a line break")
        head, found, content = piece[line_end + 2:].partition(b"\r\n\r\n")
        if not found:
            if not piece[line_end + 2:].startswith(b"\r\n"):
                raise Malformed("a multipart part has no blank line after its headers")
            head, content = b"", piece[line_end + 4:]
        parts.append((_content_type(head), content))
    return parts


def _content_type(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            return value.strip()
    return "application/dicom"        # the request's type parameter names every part's type


def _store_response(taken: list[tuple[str, str]], failed: list[admission.Refused]) -> Dataset:
    response = Dataset()
    if taken:
        response.ReferencedSOPSequence = [_reference(c, i) for c, i in taken]
    if failed:
        response.FailedSOPSequence = [_failure(e) for e in failed]
    return response


def _reference(sop_class: str | None, sop_instance: str | None) -> Dataset:
    item = Dataset()
    if sop_class:          # a UID that is no UID (a "../" in it) is not echoed back
        item.ReferencedSOPClassUID = sop_class
    if sop_instance:
        item.ReferencedSOPInstanceUID = sop_instance
    return item


def _failure(refused: admission.Refused) -> Dataset:
    item = _reference(refused.sop_class_uid, refused.sop_instance_uid)
    item.FailureReason = refused.status
    return item


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status, content_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message, "status": status}, status)
