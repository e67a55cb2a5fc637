"""The model repository's one lock: every writer (a push, a label's or a site's decision) holds
it, so two writers never interleave their history lines or configs. Apart from
``serving.repository`` so that readers of the decisions (the gateway) import nothing that loads
models."""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def locked(root: Path):
    """One writer at a time: pipelines of several modalities push into one repository, and each
    rewrites models.config from the folder listing; without the lock one could drop another's model."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".push.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
