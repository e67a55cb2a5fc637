"""What is deployed, read from the model repository: each model's labels (stable, canary: as
its recorded decisions left them, ``serving.history``), its sites' operating points in effect
(``serving.sites``) and card, that of the stable version
(for a model from before the history: the version the model server answers with, learned from
its answers and status; the newest folder until then). Routes and pages come from here, not
from code, so adding a model or a modality to the repository needs no gateway change. A broken
newer version that the server could not load does not replace the card of the version still
answering.

The repository is listed again at most every ``refresh_s`` seconds: a listing of a repository of
17 models costs about 1.5 ms, and a request asks for cards several times. The model server
itself polls the repository every 2 s, so a new version cannot answer any sooner."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from components.core import catalog
from components.core.artifacts import PICTURES
from serving import layout, sites


log = logging.getLogger(__name__)


class Deployed:
    def __init__(self, root: str | Path, refresh_s: float = 1.0):
        self.root = Path(root)
        self.refresh_s = refresh_s
        self._listed_at = float("-inf")       # when the repository was last listed (monotonic)
        self._lock = threading.Lock()
        self._key = None
        self._cards: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}    # model -> why its card is not offered
        self._served: dict[str, int] = {}     # model -> version the model server answers with
        self._labels: dict[str, dict[str, int]] = {}
        self._sites: dict[str, dict[str, dict]] = {}     # model -> site -> profile in effect
        self._known_sites: list[str] = []                 # every site a deployed model has had a profile for
        self._version_cards: dict[tuple[str, int], dict] = {}

    def _state_key(self):
        """Changes when a model or version appears or goes, or a decision is recorded (cheap:
        directory listings and one stat per model)."""
        from serving import history

        listing = tuple((m, tuple(layout.versions(self.root, m)), _mtime(history.path(self.root, m)),
                         _mtime(sites.path(self.root, m))) for m in layout.models(self.root))
        return listing, tuple(sorted(self._served.items()))

    def note_served(self, name: str, version: int) -> None:
        """The model server answered ``name`` with ``version``: show that version's card."""
        if self._served.get(name) != version:
            self._served[name] = version
            self._listed_at = float("-inf")   # the card shown may change now

    def cards(self) -> dict[str, dict]:
        if time.monotonic() - self._listed_at < self.refresh_s:
            return self._cards
        key = self._state_key()
        with self._lock:
            self._listed_at = time.monotonic()
            if key != self._key:
                cards, skipped, all_labels, all_sites, known = {}, {}, {}, {}, set()
                for name, versions, *_ in key[0]:
                    if not versions:
                        continue
                    labels = layout.labels(self.root, name)
                    all_labels[name] = labels
                    version = labels.get("stable") or (
                        self._served.get(name) if self._served.get(name) in versions else versions[-1])
                    try:
                        card = layout.card(self.root, name, version)
                        problems = layout.check_card(card)
                        if not problems and card["model_name"] != name:
                            problems = [f"its card names {card['model_name']!r}"]
                    except (OSError, ValueError) as e:
                        problems = [f"no readable card ({type(e).__name__})"]
                    if problems:             # one bad card must not take every page down
                        skipped[name] = f"version {version}: {'; '.join(problems)}"
                        log.warning("not offering %s: %s", name, skipped[name])
                        continue
                    cards[name] = {**card, "version": version, "labels": labels}
                    all_sites[name], known_here = _sites_of(self.root, name)
                    known |= known_here
                self._cards, self.skipped, self._labels, self._key = cards, skipped, all_labels, key
                self._sites, self._known_sites = all_sites, sorted(known)
            return self._cards

    def labels(self, name: str) -> dict[str, int]:
        self.cards()
        return self._labels.get(name, {})

    def sites(self, name: str) -> dict[str, dict]:
        """``{site: profile}`` in effect for ``name`` (gateway.operating applies them)."""
        self.cards()
        return self._sites.get(name, {})

    def known_sites(self) -> list[str]:
        """Every site a deployed model has had a profile for, revoked ones too: a site's
        configured clients keep working (at the model's own point) after a revocation."""
        self.cards()
        return self._known_sites

    def card_of(self, name: str, version: int) -> dict | None:
        """The card of one version (the one that answered a request), read once."""
        card = self.card(name)
        if card is None or card["version"] == version:
            return card
        key = (name, version)
        if key not in self._version_cards:
            try:
                self._version_cards[key] = {**layout.card(self.root, name, version), "version": version,
                                            "labels": card["labels"]}
            except (OSError, ValueError):
                return card
        return self._version_cards[key]

    def card(self, name: str) -> dict | None:
        return self.cards().get(name)

    def modalities(self) -> dict[str, dict[str, list[str]]]:
        """modality -> strategy -> model names, backbones in the catalog's order."""
        order = {b: i for i, b in enumerate(catalog.BACKBONES)}
        out: dict[str, dict[str, list[str]]] = {}
        for name, card in sorted(self.cards().items()):
            out.setdefault(card["modality"], {}).setdefault(card["strategy"], []).append(name)
        for strategies in out.values():
            for names in strategies.values():
                names.sort(key=lambda n: order.get(self.cards()[n]["backbone"], 99))
        return out

    def cohort(self, modality: str, strategy: str) -> list[str]:
        return self.modalities().get(modality, {}).get(strategy, [])

    def decisions(self, name: str, last: int = 5) -> list[dict]:
        from serving import history

        return history.read(self.root, name)[-last:] if self.card(name) else []

    def picture(self, name: str, filename: str) -> Path | None:
        card = self.card(name)
        if card is None or filename not in PICTURES:
            return None
        path = self.root / name / str(card["version"]) / "assets.extra" / filename
        return path if path.is_file() else None


def _sites_of(root: Path, name: str) -> tuple[dict[str, dict], set[str]]:
    """(profiles in effect, every site known) of one model; an unreadable sites.json offers none
    rather than taking every page down (logged: the operator rewrites it with the next decision)."""
    try:
        return sites.current(root, name), sites.known(root, name)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("no site operating points for %s: its %s is unreadable (%s)", name, sites.SITES, type(e).__name__)
        return {}, set()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
