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
push of that model. Pushing the same export twice is a no-op. The
newest version is labelled ``canary`` and the one before it ``stable`` (a single version is
``stable``); the last ``keep`` versions are kept.
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


def labels(available: list[int]) -> dict[str, int]:
    if not available:
        return {}
    if len(available) == 1:
        return {"stable": available[-1]}
    return {"stable": available[-2], "canary": available[-1]}


def export_digest(export_dir: Path) -> str:
    """sha256 over every file of a SavedModel export (paths and bytes), the digest file aside."""
    from components.records import tree_sha256

    return tree_sha256(export_dir, exclude=[DIGEST.as_posix()])


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


def push(export_dir: str | Path, root: str | Path, keep: int = 3, base_path: str | None = None) -> PushResult:
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
    digest = export_digest(export_dir)
    with _locked(root):
        return _push_locked(export_dir, root, model, digest, keep, base_path)


def _push_locked(export_dir: Path, root: Path, model: str, digest: str, keep: int, base_path: str | None) -> PushResult:
    existing = versions(root, model)
    if existing and _digest_of(root / model / str(existing[-1])) == digest:
        write_configs(root, base_path)
        return PushResult(model, existing[-1], False, "identical to the latest version; nothing pushed")
    version = (existing[-1] + 1) if existing else 1
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
    for old in versions(root, model)[:-keep]:
        shutil.rmtree(root / model / str(old), ignore_errors=True)
    write_configs(root, base_path)
    return PushResult(model, version, True, f"pushed as version {version}")


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
        served = sorted(set(labels(available).values()))
        entry.model_version_policy.specific.versions.extend(served)
        for label, version in labels(available).items():
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
