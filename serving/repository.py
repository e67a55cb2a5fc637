"""The model repository: ``<root>/<model-name>/<version>/`` (integer versions), each a
SavedModel with ``assets.extra/model_card.json``; ``<root>/models.config`` and
``<root>/batching.config`` in TensorFlow Serving's text formats, so the official
``tensorflow/serving`` image and the embedded server read the same folder.

A push checks its input first: the card's model name must be one of the catalog's (so it
resolves inside the repository: no ``../``, no absolute path) and the card must match the card
schema (``check_card``). It then copies the export into a hidden sibling, makes folders 0755
and files 0644 (a server running under another uid must read them), fsyncs every file and
folder, and renames it to the next version, so a server polling the folder never sees half a
model, even after a crash. Staging folders a killed push left behind are removed by the next
push of that model. Pushing the same export twice is a no-op.

Before it is published, a version must load and answer its warm-up requests as the model server
would load it (``serving.store.verify_export``); one that does not is refused and the refusal
recorded. The labels follow the recorded decisions (``serving.history``), never folder order:
the first verified version of a model is ``stable``; a later one becomes ``canary`` when its
push carries a blessing (a pipeline's champion/challenger comparison, or an operator's push);
``promote`` and ``rollback`` move them after that. ``models.config`` serves the labelled
versions. The last ``keep`` versions are kept, and every version a label or a rollback may
still need.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.core.artifacts import WARMUP_FILE
from components.core.atomic import fsync_dir, fsync_tree
from serving import history
from serving.configs import write_configs
from serving.layout import CARD, DIGEST, check_card, labels, model_folder, versions
from serving.lock import locked

@dataclass(frozen=True)
class PushResult:
    model: str
    version: int
    pushed: bool
    reason: str


def export_digest(export_dir: Path) -> str:
    """sha256 over every file of a SavedModel export (paths and bytes), the digest file aside."""
    from components.core.digests import combined_sha256

    return combined_sha256(_file_digests(export_dir))


def serving_digest(files: dict[str, str]) -> str:
    """sha256 over what loading and warming up an export reads (of its ``_file_digests``): the
    graph, variables, assets and warm-up requests, not the card or the pictures."""
    from components.core.digests import combined_sha256

    return combined_sha256({rel: d for rel, d in files.items()
                            if not rel.startswith("assets.extra/") or rel == f"assets.extra/{WARMUP_FILE}"})


def _file_digests(export_dir: Path) -> dict[str, str]:
    from components.core.digests import file_digests

    return file_digests(export_dir, exclude=[DIGEST.as_posix()])


def push(export_dir: str | Path, root: str | Path, keep: int = 3, base_path: str | None = None,
         canary: dict | None = None, user: str | None = None) -> PushResult:
    """Publish ``export_dir`` as the model's next version, once it has loaded and warmed up.
    ``canary``: the blessing that lets it take the canary label (``{"blessed": True, ...}``, its
    evidence recorded); without one a new version of a model that has a stable version gets no
    label (an operator's ``promote`` can give it one). The first version of a model is stable."""
    export_dir, root = Path(export_dir), Path(root)
    if not (export_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{export_dir} is not a SavedModel (no saved_model.pb); pass the folder components.export wrote")
    if not (export_dir / CARD).is_file():
        raise FileNotFoundError(f"{export_dir / CARD} is missing: export with components.export so the gateway can describe the model")
    if keep < 1:
        raise ValueError("--keep must be at least 1")
    try:
        card_ = json.loads((export_dir / CARD).read_text())
    except ValueError as e:
        raise ValueError(f"{export_dir / CARD} is not valid JSON ({e}); re-export the model") from None
    problems = check_card(card_)
    if problems:
        raise ValueError(f"{export_dir / CARD} fails the card schema: {'; '.join(problems)}; nothing was pushed")
    model = card_["model_name"]
    model_folder(root, model)
    files = _file_digests(export_dir)          # read once: the export's digest and the load's
    with locked(root):
        return _push_locked(export_dir, root, model, files, keep, base_path, canary, user)


_LOAD_PROBLEMS: dict[str, str | None] = {}      # serving digest -> why it does not serve (None: it does)


def _load_problem(export_dir: Path, files: dict[str, str]) -> str | None:
    """Why the export does not serve, found once a process per content that loading reads
    (``serving_digest``): an operator or a test pushes one graph with several cards."""
    from serving.store import verify_export

    key = serving_digest(files)
    if key not in _LOAD_PROBLEMS:
        _LOAD_PROBLEMS[key] = verify_export(export_dir)
    return _LOAD_PROBLEMS[key]


def _push_locked(export_dir: Path, root: Path, model: str, files: dict[str, str], keep: int, base_path: str | None,
                 canary: dict | None, user: str | None) -> PushResult:
    from components.core.digests import combined_sha256

    digest = combined_sha256(files)
    existing = versions(root, model)
    if existing and _digest_of(root / model / str(existing[-1])) == digest:
        write_configs(root, base_path)
        return PushResult(model, existing[-1], False, "identical to the latest version; nothing pushed")
    version = (existing[-1] + 1) if existing else 1
    problem = _load_problem(export_dir, files)
    if problem:
        # no version number: nothing was published, and the next push takes this number
        history.append(root, model, "refused", user=user, evidence={"export_sha256": digest, **(canary or {})},
                       reason=f"does not load and warm up: {problem}")
        return PushResult(model, version, False, f"refused: it does not load and warm up ({problem}); nothing published")
    (root / model).mkdir(parents=True, exist_ok=True)
    os.chmod(root / model, 0o755)
    for stale in (root / model).glob(".push-*"):     # left by a killed push: we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".push-{version}-", dir=root / model))
    try:
        shutil.copytree(export_dir, stage, dirs_exist_ok=True)
        (stage / DIGEST).write_text(digest + "\n")
        fsync_tree(stage)
        os.replace(stage, root / model / str(version))   # atomic: the server sees all or nothing
        fsync_dir(root / model)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    history.append(root, model, "verified", to=version, user=user, evidence={"export_sha256": digest},
                   reason="loaded and answered its warm-up requests before it was published")
    before = labels(root, model)
    if "stable" not in before:
        history.append(root, model, "stable", to=version, user=user, evidence=canary or {},
                       reason="the first version of the model: judged by the absolute rule alone")
        outcome = f"pushed as version {version}, stable (the model's first)"
    elif canary and canary.get("blessed"):
        history.append(root, model, "canary", to=version, from_=before.get("canary"), user=user, evidence=canary,
                       reason=canary.get("reason", "blessed for canary"))
        outcome = f"pushed as version {version}, canary (stable stays {before['stable']})"
    else:
        outcome = f"pushed as version {version}, unlabelled (no canary blessing; stable stays {before['stable']})"
    _retire(root, model, keep)
    write_configs(root, base_path)
    return PushResult(model, version, True, outcome)


def needed(root: str | Path, model: str) -> set[int]:
    """Versions a label holds or a rollback may return to (the stable versions before)."""

    return set(labels(root, model).values()) | set(history.stables(history.read(root, model))[-3:])  # rollback targets


def _retire(root: Path, model: str, keep: int) -> None:
    keep_set = set(versions(root, model)[-keep:]) | needed(root, model)
    for old in versions(root, model):
        if old not in keep_set:
            shutil.rmtree(root / model / str(old), ignore_errors=True)


def promote(root: str | Path, model: str, version: int, reason: str, evidence: dict | None = None,
            user: str | None = None, base_path: str | None = None) -> dict:
    """``stable`` -> ``version`` (a verified version still present), recorded."""

    root = Path(root)
    model_folder(root, model)
    with locked(root):
        recorded = history.read(root, model)
        if version not in versions(root, model):
            raise ValueError(f"{model} has no version {version}; it has {versions(root, model)}")
        if version not in history.verified(recorded):
            raise ValueError(f"{model} version {version} was never verified to load: a label moves only to a "
                             "version that loaded and warmed up")
        before = labels(root, model)
        entry = history.append(root, model, "promote", to=version, from_=before.get("stable"), label="stable",
                               reason=reason, evidence=evidence, user=user)
        write_configs(root, base_path)
    return entry


def rollback(root: str | Path, model: str, reason: str, user: str | None = None, base_path: str | None = None) -> dict:
    """Undo the latest roll-out: a canary loses its label (traffic returns to stable); without a
    canary, ``stable`` returns to the version that was stable before it."""

    root = Path(root)
    model_folder(root, model)
    with locked(root):
        before = labels(root, model)
        if "canary" in before:
            entry = history.append(root, model, "rollback", from_=before["canary"], to=before.get("stable"),
                                   label="canary", reason=reason, user=user)
        else:
            stack = history.stables(history.read(root, model))
            if len(stack) < 2 or stack[-2] not in versions(root, model):
                raise ValueError(f"{model} has no earlier stable version to roll back to")
            entry = history.append(root, model, "rollback", from_=stack[-1], to=stack[-2], label="stable",
                                   reason=reason, user=user)
        write_configs(root, base_path)
    return entry


def _digest_of(version_dir: Path) -> str | None:
    path = version_dir / DIGEST
    return path.read_text().strip() if path.exists() else None
