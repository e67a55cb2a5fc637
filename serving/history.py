"""The decisions that move a model's version labels, in an append-only history beside its
versions (``<root>/<model>/history.jsonl``, one JSON object a line), and the label policy: a
function of that history alone, never of folder order.

Every record has the time (UTC), the user, the action, the version it moved from and to, the
reason, and the evidence (a blessing, a comparison with the champion, the model server's
status). The actions:

- ``verified``: the version loaded and answered its warm-up requests before it was published;
- ``refused``: an export that did not (why, its sha256): it was not published, so it has no
  version and never holds a label;
- ``stable``: the first version of a model, judged by the absolute rule alone;
- ``canary``: a candidate blessed by evidence (non-inferior to the champion) takes the canary;
- ``promote``: an operator moves ``stable`` to a version (the canary, usually);
- ``rollback``: an operator takes the canary away, or moves ``stable`` back to the version
  that was stable before it;
- ``site-accept`` and ``site-revoke``: an operator puts a site's accepted operating point in
  effect for one version, or takes it out (``serving.sites``; ``label`` names the site).

A label only ever names a verified version. The file is rewritten whole under a temporary name
and renamed (the callers hold the repository's lock), so a reader sees the history before or
after a decision, never half a line.
"""
from __future__ import annotations

import datetime
import getpass
import json
import os
from pathlib import Path

from components.core import audit
from components.core.atomic import write_bytes

HISTORY = "history.jsonl"
ACTIONS = ("verified", "refused", "stable", "canary", "promote", "rollback", "site-accept", "site-revoke")


def path(root: str | Path, model: str) -> Path:
    return Path(root) / model / HISTORY


def read(root: str | Path, model: str) -> list[dict]:
    p = path(root, model)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append(root: str | Path, model: str, action: str, *, to: int | None = None, from_: int | None = None,
           label: str | None = None, reason: str = "", evidence: dict | None = None, user: str | None = None,
           verified: bool = False) -> dict:
    """Add one decision to the model's history (atomically: the old lines and the new one are
    written under a temporary name, fsync'ed and renamed), chained to the line before it as the
    access audit is (``components.core.audit``: ``python -m gateway.audit verify`` checks it).

    ``user`` and ``verified``: the identity a verified token gave, where the decision came through
    an authenticated door; otherwise the operating-system user, which anyone can set, recorded as
    ``verified: false``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    p = path(root, model)
    old = p.read_bytes() if p.exists() else b""
    last = old.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "user": user or _user(), "verified": bool(user and verified),
             "action": action, "model": model, "label": label, "from": from_, "to": to,
             "reason": reason, "evidence": evidence or {}, "prev": audit.line_hash(last) if old else audit.GENESIS}
    line = json.dumps(entry, sort_keys=True) + "\n"
    write_bytes(p, old + line.encode(), durable=True, mode=0o644)
    write_bytes(audit.head_path(p), json.dumps({"lines": old.count(b"\n") + 1, "sha256": audit.line_hash(line.encode())
                                                }).encode() + b"\n", durable=True, mode=0o644)
    return entry


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):          # a container's uid without a passwd entry
        return f"uid {os.getuid()}"


def verified(history: list[dict]) -> set[int]:
    """Versions that loaded and warmed up before they were published (a refused export was never
    published, so it has no version)."""
    return {r["to"] for r in history if r["action"] == "verified"}


def replay(history: list[dict]) -> tuple[list[int], int | None]:
    """(the stack of stable versions, the canary) as the decisions left them. ``stable`` and
    ``promote`` push a version onto the stack, a rollback of stable pops it (the version below
    is stable again), a rollback of the canary takes it away; only verified versions count."""
    ok = verified(history)
    stack, canary = [], None
    for r in history:
        action, to = r["action"], r.get("to")
        if action in ("stable", "promote") and to in ok:
            stack.append(to)
            canary = None if canary == to else canary
        elif action == "canary" and to in ok:
            canary = to
        elif action == "rollback":
            if r.get("label") == "canary":
                canary = None
            elif len(stack) > 1:
                stack.pop()
    return stack, canary


def labels(history: list[dict]) -> dict[str, int]:
    """``stable`` and ``canary`` as the decisions left them; a label never names a version that
    was not verified, and the canary goes when it becomes stable."""
    stack, canary = replay(history)
    out = {"stable": stack[-1]} if stack else {}
    if canary is not None and canary != out.get("stable"):
        out["canary"] = canary
    return out


def stables(history: list[dict]) -> list[int]:
    """The stable versions a rollback can return to, oldest first, the current one last."""
    return replay(history)[0]
