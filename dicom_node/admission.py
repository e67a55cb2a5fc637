"""Which received instances the node takes: checked once, the same for C-STORE and STOW-RS.

Only the header is read (the gateway decodes the pixels, with components.imaging.dicom): the SOP class
must be an image the product reads (Digital Mammography X-Ray, Ultrasound), the transfer
syntax one components.imaging.dicom decodes (Deflated is refused from the file meta alone, before
pydicom would inflate the whole body), and the study, series and instance UIDs digits and dots,
so a ``../`` in a UID is refused here even though no UID ever becomes a path. A refusal carries
the DICOM status a C-STORE answers and a STOW-RS response lists as the Failure Reason.
"""
from __future__ import annotations

import io

import pydicom
from pydicom import config
from pydicom.filereader import read_dataset

from components.imaging import dicom
from dicom_node.inbox import Instance

# DICOM statuses (PS3.4 B.2.3, PS3.18 10.5.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

STORAGE_CLASSES = tuple(sorted(dicom.IMAGE_CLASSES))
TRANSFER_SYNTAXES = tuple(sorted(dicom.TRANSFER_SYNTAXES))
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class Refused(Exception):
    """The node does not take this instance; ``status`` says why in DICOM's terms."""

    def __init__(self, status: int, reason: str, sop_class_uid: str | None = None, sop_instance_uid: str | None = None):
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.sop_class_uid, self.sop_instance_uid = sop_class_uid, sop_instance_uid


def admit(data: bytes, sender: str | None = None) -> Instance:
    """``data`` (a Part 10 file) as an Instance the node holds, or Refused. ``sender``: the
    calling AE title it came from (the site mapping reads it, with the Institution Name)."""
    syntax = _transfer_syntax(data)
    if syntax not in dicom.TRANSFER_SYNTAXES:
        raise Refused(TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {pydicom.uid.UID(syntax).name or syntax!r} "
                                                     "is not one the product decodes")
    try:
        # checked here, not by pydicom: its warning would log the invalid value, UID or not
        with config.disable_value_validation():
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            uids = {k: str(header.get(k, "")) for k in ("SOPClassUID", *_UID_KEYWORDS)}
            institution = str(header.get("InstitutionName", "") or "").strip() or None
    except Exception as e:       # a damaged header reaches pydicom code paths that raise anything
        raise Refused(CANNOT_UNDERSTAND, f"unreadable DICOM header ({type(e).__name__})") from None
    sop_class, sop_instance, study = uids["SOPClassUID"], uids["SOPInstanceUID"], uids["StudyInstanceUID"]
    valid = {k: _is_uid(uids[k]) for k in _UID_KEYWORDS}
    known = dict(sop_class_uid=sop_class if _is_uid(sop_class) else None,
                 sop_instance_uid=sop_instance if valid["SOPInstanceUID"] else None)
    if sop_class not in dicom.IMAGE_CLASSES:
        raise Refused(SOP_CLASS_NOT_SUPPORTED, f"SOP class {pydicom.uid.UID(sop_class).name or 'unknown'} is not an "
                                               "image the product reads (Digital Mammography X-Ray, Ultrasound)", **known)
    if not all(valid.values()):
        wrong = ", ".join(k for k, ok in valid.items() if not ok)
        raise Refused(DOES_NOT_MATCH_SOP_CLASS, f"invalid {wrong} (a UID is digits and dots, at most 64 characters)",
                      **known)
    return Instance(data, sop_instance, sop_class, study, dicom.IMAGE_CLASSES[sop_class][0], sender, institution)


def _transfer_syntax(data: bytes) -> str:
    """The file meta's Transfer Syntax UID, read without parsing the body."""
    if not dicom.is_dicom(data):
        raise Refused(CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no 128-byte preamble followed by 'DICM')")
    stream = io.BytesIO(data)
    stream.seek(132)
    try:
        meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag >> 16 != 2)
        return str(meta.get("TransferSyntaxUID", ""))
    except Exception as e:
        raise Refused(CANNOT_UNDERSTAND, f"unreadable DICOM file meta ({type(e).__name__})") from None


def _is_uid(value: str) -> bool:
    return len(value) <= 64 and dicom.UID_PATTERN.fullmatch(value) is not None
