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
would load it (``serving.server.verify_export``); one that does not is refused and the refusal
recorded. The labels follow the recorded decisions (``serving.history``), never folder order:
the first verified version of a model is ``stable``; a later one becomes ``canary`` when its
push carries a blessing (a pipeline's champion/challenger comparison, or an operator's push);
``promote`` and ``rollback`` move them after that. ``models.config`` serves the labelled
versions. The last ``keep`` versions are kept, and every version a label or a rollback may
still need.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from components.export import WARMUP_FILE
from serving import protos

CARD = Path("assets.extra") / "model_card.json"
DIGEST = Path("assets.extra") / "export_sha256.txt"
MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"


# The model card's schema: what the gateway and an auditor rely on (key -> accepted types).
CARD_SCHEMA = {"model_name": str, "modality": str, "backbone": str, "strategy": str, "label_names": list,
               "image_size": int, "threshold": (int, float), "test_metrics": dict}


def check_card(card) -> list[str]:
    """What is wrong with a model card (empty when nothing is): missing or mistyped keys, a
    name outside the catalog, or a name that disagrees with the card's modality/backbone/strategy."""
    from components import catalog

    if not isinstance(card, dict):
        return ["the model card is not a JSON object"]
    problems = [f"{key!r} is missing" if key not in card else f"{key!r} is not {_type_name(kind)}"
                for key, kind in CARD_SCHEMA.items()
                if key not in card or not isinstance(card[key], kind) or isinstance(card[key], bool)]
    name = card.get("model_name")
    if isinstance(name, str):
        try:
            parts = catalog.parse_model_name(name)
        except ValueError as e:
            problems.append(str(e))
        else:
            stated = tuple(card.get(k) for k in ("modality", "backbone", "strategy"))
            if stated != parts:
                problems.append(f"model_name {name!r} disagrees with modality/backbone/strategy {stated}")
    labels_ = card.get("label_names")
    if isinstance(labels_, list) and (len(labels_) != 2 or not all(isinstance(x, str) for x in labels_)):
        problems.append("'label_names' must be two strings")
    if isinstance(card.get("image_size"), int) and not 0 < card["image_size"] <= 4096:
        problems.append("'image_size' must be between 1 and 4096")
    if isinstance(card.get("threshold"), (int, float)) and not 0 <= card["threshold"] <= 1:
        problems.append("'threshold' must be between 0 and 1")
    return problems


def _type_name(kind) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def model_folder(root: Path, name: str) -> Path:
    """``root/name`` for a catalog model name, refusing anything that would resolve elsewhere."""
    from components import catalog

    catalog.parse_model_name(name)
    folder = (root / name).resolve()
    if folder.parent != root.resolve():
        raise ValueError(f"model name {name!r} does not resolve inside the repository {root}")
    return folder


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 16
    batch_timeout_micros: int = 5000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 100


@dataclass(frozen=True)
class PushResult:
    model: str
    version: int
    pushed: bool
    reason: str


def versions(root: str | Path, model: str) -> list[int]:
    folder = Path(root) / model
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def models(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and versions(root, p.name))


def card(root: str | Path, model: str, version: int | None = None) -> dict:
    version = version if version is not None else versions(root, model)[-1]
    return json.loads((Path(root) / model / str(version) / CARD).read_text())


def labels(root: str | Path, model: str) -> dict[str, int]:
    """``stable`` and ``canary`` of ``model``, as its recorded decisions left them, among the
    versions still present. A model pushed before the history existed: its newest version is
    ``stable``."""
    from serving import history

    present = set(versions(root, model))
    recorded = history.read(root, model)
    if not recorded:
        return {"stable": max(present)} if present else {}
    return {label: v for label, v in history.labels(recorded).items() if v in present}


def export_digest(export_dir: Path) -> str:
    """sha256 over every file of a SavedModel export (paths and bytes), the digest file aside."""
    from components.records import combined_sha256

    return combined_sha256(_file_digests(export_dir))


def serving_digest(files: dict[str, str]) -> str:
    """sha256 over what loading and warming up an export reads (of its ``_file_digests``): the
    graph, variables, assets and warm-up requests, not the card or the pictures."""
    from components.records import combined_sha256

    return combined_sha256({rel: d for rel, d in files.items()
                            if not rel.startswith("assets.extra/") or rel == f"assets.extra/{WARMUP_FILE}"})


def _file_digests(export_dir: Path) -> dict[str, str]:
    from components.records import file_digests

    return file_digests(export_dir, exclude=[DIGEST.as_posix()])


@contextlib.contextmanager
def _locked(root: Path):
    """One writer at a time: pipelines of several modalities push into one repository, and each
    rewrites models.config from the folder listing; without the lock one could drop another's model."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".push.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    with _locked(root):
        return _push_locked(export_dir, root, model, files, keep, base_path, canary, user)


_LOAD_PROBLEMS: dict[str, str | None] = {}      # serving digest -> why it does not serve (None: it does)


def _load_problem(export_dir: Path, files: dict[str, str]) -> str | None:
    """Why the export does not serve, found once a process per content that loading reads
    (``serving_digest``): an operator or a test pushes one graph with several cards."""
    from serving.server import verify_export

    key = serving_digest(files)
    if key not in _LOAD_PROBLEMS:
        _LOAD_PROBLEMS[key] = verify_export(export_dir)
    return _LOAD_PROBLEMS[key]


def _push_locked(export_dir: Path, root: Path, model: str, files: dict[str, str], keep: int, base_path: str | None,
                 canary: dict | None, user: str | None) -> PushResult:
    from components.records import combined_sha256
    from serving import history

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
        _publishable(stage)
        os.replace(stage, root / model / str(version))   # atomic: the server sees all or nothing
        _fsync(root / model)
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
    from serving import history

    return set(labels(root, model).values()) | set(history.stables(history.read(root, model))[-3:])  # rollback targets


def _retire(root: Path, model: str, keep: int) -> None:
    keep_set = set(versions(root, model)[-keep:]) | needed(root, model)
    for old in versions(root, model):
        if old not in keep_set:
            shutil.rmtree(root / model / str(old), ignore_errors=True)


def promote(root: str | Path, model: str, version: int, reason: str, evidence: dict | None = None,
            user: str | None = None, base_path: str | None = None) -> dict:
    """``stable`` -> ``version`` (a verified version still present), recorded."""
    from serving import history

    root = Path(root)
    model_folder(root, model)
    with _locked(root):
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
    from serving import history

    root = Path(root)
    model_folder(root, model)
    with _locked(root):
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


def _publishable(tree: Path) -> None:
    """Folders 0755, files 0644, every file and folder fsync'ed (children before parents)."""
    for folder, dirs, files in os.walk(tree, topdown=False):
        for name in files:
            path = Path(folder) / name
            os.chmod(path, 0o644)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(folder, 0o755)
        _fsync(Path(folder))


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest_of(version_dir: Path) -> str | None:
    path = version_dir / DIGEST
    return path.read_text().strip() if path.exists() else None


def model_server_config(root: str | Path, base_path: str | None = None):
    """``models.config``: every model, its kept versions served, stable/canary labels."""
    config = protos.ModelServerConfig()
    for name in models(root):
        available = versions(root, name)
        entry = config.model_config_list.config.add(
            name=name, base_path=f"{base_path.rstrip('/')}/{name}" if base_path else str((Path(root) / name).resolve()),
            model_platform="tensorflow")
        current = labels(root, name)
        served = sorted(set(current.values())) or available[-1:]
        entry.model_version_policy.specific.versions.extend(served)
        for label, version in current.items():
            entry.version_labels[label] = version
    return config


def batching_parameters(batching: Batching = Batching()):
    params = protos.BatchingParameters()
    params.max_batch_size.value = batching.max_batch_size
    params.batch_timeout_micros.value = batching.batch_timeout_micros
    params.num_batch_threads.value = batching.num_batch_threads
    params.max_enqueued_batches.value = batching.max_enqueued_batches
    return params


def write_configs(root: str | Path, base_path: str | None = None, batching: Batching | None = None) -> None:
    from components.atomic import write_text

    root = Path(root)
    write_text(root / MODELS_CONFIG, text_format.MessageToString(model_server_config(root, base_path)))
    if batching is not None or not (root / BATCHING_CONFIG).exists():
        write_text(root / BATCHING_CONFIG, text_format.MessageToString(batching_parameters(batching or Batching())))


def read_models_config(root: str | Path):
    return text_format.Parse((Path(root) / MODELS_CONFIG).read_text(), protos.ModelServerConfig())


def read_batching(root: str | Path) -> Batching:
    path = Path(root) / BATCHING_CONFIG
    if not path.exists():
        return Batching()
    p = text_format.Parse(path.read_text(), protos.BatchingParameters())
    d = Batching()
    return Batching(p.max_batch_size.value or d.max_batch_size, p.batch_timeout_micros.value or d.batch_timeout_micros,
                    p.num_batch_threads.value or d.num_batch_threads, p.max_enqueued_batches.value or d.max_enqueued_batches)
