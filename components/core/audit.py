"""The access audit: who did what to which image or result, when, from where, and how it ended,
in a file a security board can check for tampering.

One event per request that touches an image or a result, at the gateway and at the DICOM node.
Field names follow FHIR's AuditEvent (and DICOM PS3.15 A.5, which it maps) so a SIEM can map
them: ``recorded``, ``type``, ``subtype``, ``action``, ``outcome``, ``outcomeDesc``, ``agent``
(who, role, network address, requestor), ``source`` (the observer), ``entity`` (the model and
version, the study and the instance), plus ``requestId``. Studies and instances appear only as
keyed pseudonyms (``components.core.phi``), never as UIDs.

The file is append-only JSON lines, each carrying the SHA-256 of the line before it (``prev``; the
first line carries 64 zeros), so an edited, deleted or inserted line breaks the chain at the line
after it. ``<file>.head`` records how many lines there were and the last line's hash, so a cut
tail is found too. A line is written to the file before the request is answered (it survives the
process being killed); the file and the head are fsync'ed by a background thread at most
``sync_every_s`` later, so a request does not wait for the disk (a power cut loses at most that
much).
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from components.core.atomic import write_text

GENESIS = "0" * 64
# FHIR AuditEvent.outcome: 0 success, 4 minor failure (the caller's), 8 serious failure (ours)
OUTCOMES = {2: "0", 3: "0", 4: "4", 5: "8"}


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def event(*, subtype: str, who: str, roles: list[str] | tuple[str, ...], address: str | None, observer: str,
          status: int, request_id: str, action: str = "E", verified: bool = True,
          models: list[tuple[str, int | None]] | tuple = (), study: str | None = None, instance: str | None = None,
          kind: str = "rest", detail: str | None = None) -> dict:
    """One access, as a FHIR AuditEvent-shaped record: ``models`` the (name, version) that answered
    or were asked; ``study`` and ``instance`` pseudonyms."""
    entity = [{"what": {"display": "model"}, "name": name, **({"version": version} if version else {})}
              for name, version in models]
    if study:
        entity.append({"what": {"display": "study", "pseudonym": study}})
    if instance:
        entity.append({"what": {"display": "instance", "pseudonym": instance}})
    return {
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "type": kind, "subtype": subtype, "action": action,
        "outcome": OUTCOMES.get(status // 100, "8"), "outcomeDesc": str(status),
        "agent": [{"who": who, "role": sorted(roles), "requestor": True, "verified": verified,
                   **({"network": {"address": address}} if address else {})}],
        "source": {"observer": observer}, "entity": entity, "requestId": request_id,
        **({"detail": detail} if detail else {}),
    }


class ChainedLog:
    """An append-only, hash-chained JSON-lines file shared by the threads of one process."""

    def __init__(self, path: str | os.PathLike, sync_every_s: float = 0.05):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "ab")
        os.chmod(self.path, 0o600)
        self._lines, self._prev = _tail(self.path)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._sync_every_s = sync_every_s
        self._syncer = threading.Thread(target=self._sync_loop, name="audit-sync", daemon=True)
        self._syncer.start()

    def append(self, record: dict) -> dict:
        with self._lock:
            record = {**record, "prev": self._prev}
            line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            fcntl.flock(self._file, fcntl.LOCK_EX)          # a second writer process waits its turn
            try:
                os.write(self._file.fileno(), line)
            finally:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._prev, self._lines = line_hash(line), self._lines + 1
        self._dirty.set()
        return record

    def sync(self) -> None:
        """The lines written so far on disk, and the head naming the last of them."""
        with self._lock:
            lines, prev = self._lines, self._prev
            os.fsync(self._file.fileno())
        write_text(head_path(self.path), json.dumps({"lines": lines, "sha256": prev}) + "\n", durable=True, mode=0o600)

    def _sync_loop(self) -> None:
        while not self._closed.is_set():
            if self._dirty.wait(0.5):
                self._dirty.clear()
                self.sync()
                self._closed.wait(self._sync_every_s)

    def close(self) -> None:
        self._closed.set()
        self._syncer.join(5)
        self.sync()
        self._file.close()


def _tail(path: Path) -> tuple[int, str]:
    """(lines, hash of the last line) of an existing log."""
    lines, prev = 0, GENESIS
    if path.exists():
        with path.open("rb") as f:
            for line in f:
                lines, prev = lines + 1, line_hash(line)
    return lines, prev


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: int
    broken_line: int | None = None        # 1-based: the first line that does not follow from the one before
    reason: str = ""


def verify(path: str | os.PathLike) -> Verdict:
    """Walk the chain; the first line whose ``prev`` is not the hash of the line before it (an edit
    above it, a deleted or inserted line), that is not JSON, or a tail shorter than the head says."""
    path = Path(path)
    prev, count, hashes = GENESIS, 0, []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            count = number
            try:
                record = json.loads(line)
            except ValueError:
                return Verdict(False, count, number, "not a JSON line")
            if record.get("prev") != prev:
                return Verdict(False, count, number, "does not follow from the line before it: a line above "
                                                     "was edited, deleted or inserted")
            prev = line_hash(line)
            hashes.append(prev)
    head = head_path(path)
    if head.exists():
        recorded = json.loads(head.read_text())
        n = int(recorded["lines"])
        if n > count:
            return Verdict(False, count, count + 1, f"the head records {n} lines; {n - count} at the end are missing")
        if n and hashes[n - 1] != recorded["sha256"]:
            return Verdict(False, count, n, "differs from the line the head recorded")
    return Verdict(True, count)


def read(path: str | os.PathLike, since: datetime.datetime | None = None,
         until: datetime.datetime | None = None) -> Iterator[dict]:
    """The events recorded in [since, until) (times with a zone; UTC in the file)."""
    with Path(path).open("rb") as f:
        for line in f:
            record = json.loads(line)
            when = datetime.datetime.fromisoformat(record["recorded"])
            if (since is None or when >= since) and (until is None or when < until):
                yield record
