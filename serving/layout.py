"""The model repository's layout: ``<root>/<model-name>/<version>/`` (integer versions), each a
SavedModel with ``assets.extra/model_card.json`` checked against the card schema; which models and
versions are there, and which versions the ``stable`` and ``canary`` labels name (from the
recorded decisions, ``serving.history``)."""
from __future__ import annotations

import json
from pathlib import Path

from serving import history

CARD = Path("assets.extra") / "model_card.json"

DIGEST = Path("assets.extra") / "export_sha256.txt"

# The model card's schema: what the gateway and an auditor rely on (key -> accepted types).
CARD_SCHEMA = {"model_name": str, "modality": str, "backbone": str, "strategy": str, "label_names": list,
               "image_size": int, "threshold": (int, float), "test_metrics": dict}


def check_card(card) -> list[str]:
    """What is wrong with a model card (empty when nothing is): missing or mistyped keys, a
    name outside the catalog, or a name that disagrees with the card's modality/backbone/strategy."""
    from components.core import catalog

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
    from components.core import catalog

    catalog.parse_model_name(name)
    folder = (root / name).resolve()
    if folder.parent != root.resolve():
        raise ValueError(f"model name {name!r} does not resolve inside the repository {root}")
    return folder


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


def stable_version(root: str | Path, model: str) -> Path | None:
    """The folder of the version ``stable`` serves now, or None when the model has none yet."""
    stable = labels(root, model).get("stable") if (Path(root) / model).is_dir() else None
    return None if stable is None else Path(root) / model / str(stable)


def labels(root: str | Path, model: str) -> dict[str, int]:
    """``stable`` and ``canary`` of ``model``, as its recorded decisions left them, among the
    versions still present. A model pushed before the history existed: its newest version is
    ``stable``."""
    present = set(versions(root, model))
    recorded = history.read(root, model)
    if not recorded:
        return {"stable": max(present)} if present else {}
    return {label: v for label, v in history.labels(recorded).items() if v in present}
