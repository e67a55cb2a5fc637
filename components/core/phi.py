"""Pseudonyms for what a hospital's data identifies: patients, files, DICOM UIDs. An artifact
(records, ``inputs.csv``, ``quarantine.csv``, ``summary.json``, statistics, model cards, logs)
names them only by a keyed hash, never in clear.

A pseudonym is HMAC-SHA256 of (kind, value) under a key the run is given, cut to 16 hex digits
(64 bits: no collision among millions of patients). The same value gets the same pseudonym in
every run with the same key, so re-runs and new data group a patient alike and the split's hash
buckets stay put; without the key nobody can recompute it. A plain hash would not do: patient
IDs are guessable (``P_00001`` .. ``P_99999``, a hospital's MRN range), so anyone could hash
them all and look the artifact's values up. Neither would ``components.split``'s HMAC: its key
is the seed, a public pipeline parameter.

The key is a secret, so it never travels in a sources JSON or a pipeline parameter (both are
recorded in the audit trail and the step cache): ``--phi-key-file FILE``, or the environment,
``BCIMAGING_PHI_KEY_FILE`` (a mounted Kubernetes Secret) or ``BCIMAGING_PHI_KEY``. Artifacts
carry its ``key_id`` (an HMAC of a constant) so an auditor can tell whether two runs' pseudonyms
are comparable without learning the key.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

KEY_FILE_ENV = "BCIMAGING_PHI_KEY_FILE"
KEY_ENV = "BCIMAGING_PHI_KEY"
MIN_KEY_BYTES = 16     # 128 bits: a key that cannot be guessed either
DIGITS = 16
# a DICOM UID inside a message: digits with at least two dots (PS3.5 9.1; a decimal has one)
UID_IN_TEXT = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![\w.])")
# a quoted value right after a UID's keyword ("invalid SOPInstanceUID '1.2.PID-7'"): withheld
# whatever it holds, since a malformed UID may carry anything a vendor put in it
QUOTED_AFTER_UID = re.compile(r"(\w*UID:?) ('[^']*'|\"[^\"]*\")")


class MissingKey(ValueError):
    """A source needs pseudonyms and the run was given no (usable) key."""


def load_key(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key from ``path``, else from the environment; None when neither names one."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(KEY_FILE_ENV)
    if path:
        file = Path(path)
        if not file.is_file():
            raise MissingKey(f"PHI key file {file} not found")
        key = file.read_bytes().strip()     # a trailing newline is an editor's, not the key's
    elif environ.get(KEY_ENV):
        key = environ[KEY_ENV].strip().encode()
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise MissingKey(f"the PHI key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                         "(e.g. `openssl rand -hex 32 > phi.key`)")
    return key


def require(key: bytes | None, what: str) -> bytes:
    if not key:
        raise MissingKey(f"{what} needs a PHI key to pseudonymize patients and files: give --phi-key-file FILE, "
                         f"or set {KEY_FILE_ENV} (a mounted secret) or {KEY_ENV}")
    return key


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """16 hex digits for ``value`` of ``kind`` ("patient", "image"): kinds never collide, so a
    patient's pseudonym says nothing about a file's."""
    message = f"bcimaging-phi:{kind}\0{value}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:DIGITS]


def key_id(key: bytes) -> str:
    """Which key a run used, without revealing it."""
    return pseudonym(key, "key-id", "")


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` (a reason a reader gave) without the identifying values it may quote: each of
    ``known`` (the row's path, its parts, the patient), DICOM UIDs and values given as UIDs."""
    for value in sorted({v for v in known if v and len(v) >= 3}, key=len, reverse=True):
        text = re.sub(re.escape(value), "<withheld>", text, flags=re.I)
    text = QUOTED_AFTER_UID.sub(r"\1 <withheld>", text)
    return UID_IN_TEXT.sub("<uid>", text)
