"""What the node holds: received instances, in memory, grouped by study within a byte budget.

A study is handed on once it has been quiet (no new instance for ``quiet_s`` seconds), as
MONAI's Informatics Gateway does: a PACS sends a study's instances one association or request
at a time and never says "that was the last one". The bytes of a batch count against the
budget until the batch is released, so the budget bounds everything the node holds, waiting or
being reported on. Nothing is written to disk: a UID is a dictionary key here, never a path.

Logs name an instance and its study by ``tag``: the keyed pseudonym the access audit records
for them (``components.core.phi``, the node's PHI key). The inbox holds the key and gives each
instance its tags as it takes it in, so every door's log line and every report's can use them.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from components.core import phi

UNTAGGED = "(untagged)"       # an instance no inbox took in: its UID is never shown instead


def tag(key: bytes, kind: str, uid: str) -> str:
    """What logs show instead of a UID of ``kind`` ("study", "instance"). Keyed, unlike a plain
    hash: anyone who can query the PACS could hash every UID it holds and look a log's tags up.
    The same as the audit's pseudonym, so a log line and an audit event can be matched."""
    return phi.pseudonym(key, kind, uid)


@dataclass(frozen=True)
class Instance:
    """One received image: its Part 10 bytes and the header fields the node routes by."""
    data: bytes = field(repr=False)
    sop_instance_uid: str = field(repr=False)
    sop_class_uid: str
    study_uid: str = field(repr=False)
    modality: str                     # the product's modality: mammography, ultrasound
    sender: str | None = None         # the calling AE title it came from (None: STOW-RS)
    institution: str | None = field(default=None, repr=False)   # its Institution Name (0008,0080), if any
    # "instance" and "study" -> tag, filled by the inbox that takes it (it holds the key)
    tags: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def tag(self) -> str:
        return self.tags.get("instance", UNTAGGED)

    @property
    def study_tag(self) -> str:
        return self.tags.get("study", UNTAGGED)


@dataclass
class Batch:
    """A quiet study's instances, in the order they arrived, handed on together."""
    number: int
    study_uid: str = field(repr=False)
    instances: list[Instance]
    study_tag: str = UNTAGGED

    @property
    def bytes(self) -> int:
        return sum(len(i.data) for i in self.instances)


class OutOfResources(Exception):
    """Taking the instance would exceed the byte budget (C-STORE status 0xA700)."""


@dataclass
class _Waiting:
    instances: dict[str, Instance] = field(default_factory=dict)     # SOP Instance UID -> instance
    last_received: float = 0.0


class Inbox:
    def __init__(self, budget_bytes: int, quiet_s: float, key: bytes, clock: Callable[[], float] = time.monotonic):
        self.budget_bytes, self.quiet_s, self._clock = budget_bytes, quiet_s, clock
        self._key = phi.require(key, "the DICOM node's logs")
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}          # study UID -> what has come so far
        self._held = 0                                   # bytes waiting plus bytes in batches
        self._numbers = itertools.count(1)

    def add(self, instance: Instance) -> None:
        """Hold ``instance`` in its study, or OutOfResources. The same SOP instance sent again
        before its study was handed on replaces the first copy (a PACS retrying a send)."""
        instance.tags.update(instance=tag(self._key, "instance", instance.sop_instance_uid),
                             study=tag(self._key, "study", instance.study_uid))
        with self._lock:
            study = self._waiting.setdefault(instance.study_uid, _Waiting())
            replaced = study.instances.get(instance.sop_instance_uid)
            growth = len(instance.data) - (len(replaced.data) if replaced else 0)
            if self._held + growth > self.budget_bytes:
                if not study.instances:
                    del self._waiting[instance.study_uid]
                raise OutOfResources(f"the node holds {self._held:,} bytes; {len(instance.data):,} more would exceed "
                                     f"its budget of {self.budget_bytes:,}")
            study.instances[instance.sop_instance_uid] = instance
            study.last_received = self._clock()
            self._held += growth

    def take_quiet(self, everything: bool = False) -> list[Batch]:
        """The studies quiet for ``quiet_s`` (``everything``: all, when the node stops), as
        batches; their bytes stay held until ``release``."""
        with self._lock:
            now = self._clock()
            quiet = [uid for uid, s in self._waiting.items() if everything or now - s.last_received >= self.quiet_s]
            return [Batch(next(self._numbers), uid, list(self._waiting.pop(uid).instances.values()),
                          tag(self._key, "study", uid)) for uid in quiet]

    def release(self, batch: Batch) -> None:
        with self._lock:
            self._held -= batch.bytes

    def status(self) -> dict:
        with self._lock:
            return {"held_bytes": self._held, "budget_bytes": self.budget_bytes,
                    "studies_waiting": len(self._waiting),
                    "instances_waiting": sum(len(s.instances) for s in self._waiting.values())}
