"""Per-site operating points: a hospital's accepted site profile (a temperature and a threshold
for one version of one model, fitted and checked on the site's own labelled images by site
acceptance) is a recorded decision in the model repository, like a label, and revocable the
same way.

Each decision is a line of the model's hash-chained history (``serving.history``): action
``site-accept`` (``label``: the site, ``to``: the version, the whole profile and its evidence's
SHA-256 as evidence) or ``site-revoke``. What is in effect is a function of that history alone
(``replay``), written after every decision to ``<root>/<model>/sites.json`` (atomically), which
the gateway reads; a crash between the two writes is healed by the next decision.

A profile names the version it was accepted for and applies to that version only: a new version
has not been checked on the site's images, so it answers at its own operating point until a
profile for it is accepted. A profile whose version is retired stays recorded and inert.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from components.core.atomic import write_bytes
from serving import history
from serving.layout import model_folder, versions
from serving.lock import locked

SITES = "sites.json"
ACCEPT, REVOKE = "site-accept", "site-revoke"
SITE = re.compile(r"[a-z0-9-]{1,32}")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_PROFILE_BYTES = 64 * 1024          # a profile is a few hundred bytes; never parse a large file
PROFILE_KEYS = ("site", "model", "version", "temperature", "threshold", "target", "acceptance", "acceptance_sha256")


def path(root: str | Path, model: str) -> Path:
    return Path(root) / model / SITES


def check_site(site) -> str:
    """``site`` when it is a site name (a short slug: it appears in URLs, logs and reports)."""
    if not isinstance(site, str) or not SITE.fullmatch(site):
        raise ValueError(f"site {site!r} is not a site name: 1 to 32 of a-z, 0-9 and '-'")
    return site


def check_profile(profile, root: str | Path, model: str) -> list[str]:
    """What is wrong with a site profile for ``model`` in the repository at ``root`` (empty when
    nothing is)."""
    if not isinstance(profile, dict):
        return ["the profile is not a JSON object"]
    problems = [f"{key!r} is missing" for key in PROFILE_KEYS if key not in profile]
    if problems:
        return problems
    try:
        check_site(profile["site"])
    except ValueError as e:
        problems.append(str(e))
    if profile["model"] != model:
        problems.append(f"it is a profile for {profile['model']!r}, not {model!r}")
    version = profile["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version not in versions(root, model):
        problems.append(f"version {version!r} is not a version of {model} in the repository "
                        f"(it has {versions(root, model)})")
    if not _number(profile["temperature"]) or not profile["temperature"] > 0:
        problems.append(f"temperature {profile['temperature']!r} must be a number above 0")
    if not _number(profile["threshold"]) or not 0 < profile["threshold"] < 1:
        problems.append(f"threshold {profile['threshold']!r} must be a number between 0 and 1 (exclusive)")
    if not isinstance(profile["target"], dict):
        problems.append("'target' must be an object (what the threshold was chosen for)")
    if not isinstance(profile["acceptance"], str) or not profile["acceptance"] or "/" in profile["acceptance"]:
        problems.append("'acceptance' must be the file name of the acceptance report")
    if not isinstance(profile["acceptance_sha256"], str) or not SHA256.fullmatch(profile["acceptance_sha256"]):
        problems.append("'acceptance_sha256' must be a lowercase hex SHA-256")
    return problems


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_profile(profile_path: str | Path) -> tuple[dict, bytes]:
    """(the profile, its bytes), read within its small limit."""
    profile_path = Path(profile_path)
    with open(profile_path, "rb") as f:
        data = f.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise ValueError(f"{profile_path} is larger than a site profile can be ({MAX_PROFILE_BYTES} bytes)")
    try:
        return json.loads(data), data
    except ValueError as e:
        raise ValueError(f"{profile_path} is not valid JSON ({e})") from None


def accept(root: str | Path, model: str, profile_path: str | Path, reason: str, user: str | None = None,
           verified: bool = False) -> dict:
    """Put the site profile at ``profile_path`` in effect for its site (replacing that site's
    earlier one), recorded with its evidence. The acceptance report it names, when it lies
    beside the profile, must hash to the profile's ``acceptance_sha256``: a profile edited
    after its acceptance is refused."""
    root = Path(root)
    model_folder(root, model)
    profile, data = read_profile(profile_path)
    with locked(root):
        problems = check_profile(profile, root, model)
        if problems:
            raise ValueError(f"{profile_path} is not a site profile for {model}: {'; '.join(problems)}; nothing recorded")
        report = Path(profile_path).with_name(profile["acceptance"])
        checked = report.is_file()
        if checked and hashlib.sha256(report.read_bytes()).hexdigest() != profile["acceptance_sha256"]:
            raise ValueError(f"{report} does not hash to the profile's acceptance_sha256: the profile is not the "
                             "one its acceptance wrote; nothing recorded")
        before = current(root, model).get(profile["site"])
        profile = {k: profile[k] for k in PROFILE_KEYS}
        entry = history.append(root, model, ACCEPT, label=profile["site"], to=profile["version"],
                               from_=before and before["version"], reason=reason, user=user, verified=verified,
                               evidence={"profile": profile, "acceptance_sha256": profile["acceptance_sha256"],
                                         "profile_sha256": hashlib.sha256(data).hexdigest(),
                                         "acceptance_report_checked": checked})
        _write(root, model)
    return entry


def revoke(root: str | Path, model: str, site: str, reason: str, user: str | None = None,
           verified: bool = False) -> dict:
    """Take ``site``'s profile out of effect: the model answers there at its own operating point."""
    root = Path(root)
    model_folder(root, model)
    check_site(site)
    with locked(root):
        active = current(root, model)
        if site not in active:
            raise ValueError(f"{model} has no profile in effect for site {site!r}; in effect: "
                             f"{', '.join(sorted(active)) or 'none'}")
        entry = history.append(root, model, REVOKE, label=site, from_=active[site]["version"], reason=reason,
                               user=user, verified=verified,
                               evidence={"acceptance_sha256": active[site]["acceptance_sha256"]})
        _write(root, model)
    return entry


def replay(recorded: list[dict]) -> dict:
    """``{"sites": {site: profile}, "revoked": [site, ...]}`` as the decisions left them: the
    profiles in effect, and the sites whose profile was revoked (still known to the gateway,
    answered at the model's own operating point)."""
    active: dict[str, dict] = {}
    revoked: set[str] = set()
    for r in recorded:
        if r["action"] == ACCEPT:
            active[r["label"]] = r["evidence"]["profile"]
            revoked.discard(r["label"])
        elif r["action"] == REVOKE:
            active.pop(r["label"], None)
            revoked.add(r["label"])
    return {"sites": active, "revoked": sorted(revoked)}


def _write(root: Path, model: str) -> None:
    state = replay(history.read(root, model))
    write_bytes(path(root, model), json.dumps(state, indent=2, sort_keys=True).encode() + b"\n", durable=True,
                mode=0o644)


def _state(root: str | Path, model: str) -> dict:
    p = path(root, model)
    if not p.is_file():
        return {"sites": {}, "revoked": []}
    return json.loads(p.read_text())


def current(root: str | Path, model: str) -> dict[str, dict]:
    """``{site: profile}``: the profiles in effect for ``model``."""
    return _state(root, model)["sites"]


def known(root: str | Path, model: str) -> set[str]:
    """Every site ``model`` has had a profile for, revoked ones too."""
    state = _state(root, model)
    return set(state["sites"]) | set(state["revoked"])
