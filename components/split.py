"""Split: extracted examples -> train/validation/test, grouped by patient within each source,
stratified by the patient's labels, every source in every split.

No patient is in two splits. A patient's stratum is its source and its label profile (only
negatives, only positives, or both). In a stratum of at least ``HASH_MIN_GROUPS`` patients,
a patient's split is a keyed hash of its source and id (HMAC-SHA256 keyed by the seed, buckets
of the fractions, as TFX ExampleGen's hash buckets): it depends on nothing else, so adding data
never moves an earlier patient to another split, and a test patient never lands in train.
Smaller strata cannot fill three buckets by chance, so there the patients are assigned greedily
to the split whose per-class counts fall furthest below target (best of several seeded orders,
one patient of each class per split first); the manifest names which strata were assigned how,
and says that those assignments may change when patients are added. Records are written in
``source_id`` order, so the same examples and seed give byte-identical splits and manifest.

Optionally (``--near-duplicate-r``), images of one source whose 32x32 grayscale thumbnails
correlate at or above r are merged into one group first: BUSI-style datasets file near-identical
frames of one lesion as separate images, sometimes under different classes, which would leak
across splits.

    python -m components.split --examples DIR --out DIR2 [--seed S]
"""
from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import hmac
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.core import artifacts, catalog, cli
from components.imaging import inputstats
from components.data import schema
from components.core.atomic import staged_dir, write_json, write_text
from components.data.records import read_records, write_shards
from components.core.digests import content_digest, sha256_bytes

SPLITS = ("train", "validation", "test")
RECORDS_PER_SHARD = 4096
# a stratum this large fills every bucket by chance (an empty 15 % bucket: 0.85**40 = 0.15 %)
HASH_MIN_GROUPS = 40


@dataclass
class Meta:
    patient_id: str
    label: int
    digest: str
    modality: str
    source: str
    source_id: str


def _decode(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _thumbnail(image, side: int = 32) -> np.ndarray:
    from PIL import Image

    v = np.asarray(image.convert("L").resize((side, side), Image.BILINEAR), np.float32).ravel()
    v -= v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def near_duplicate_pairs(thumbs: np.ndarray, r: float, block: int = 2048) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose thumbnail correlation is >= r (blocked, so memory stays small)."""
    pairs = []
    for start in range(0, len(thumbs), block):
        sims = thumbs[start:start + block] @ thumbs.T
        for i, j in zip(*np.nonzero(sims >= r)):
            if start + i < j:
                pairs.append((int(start + i), int(j)))
    return pairs


def merge_groups(patients: list[str], pairs: list[tuple[int, int]]) -> list[str]:
    """Union-find: records joined by a pair share one group name (the smallest patient id)."""
    parent = {p: p for p in patients}

    def find(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for i, j in pairs:
        a, b = sorted((find(patients[i]), find(patients[j])))
        parent[b] = a
    return [find(p) for p in patients]


def assign_groups(group_counts: dict[str, np.ndarray], fractions: tuple[float, ...], seed: int,
                  tries: int = 64) -> dict[str, int]:
    """Map each group to a split index; ``group_counts[g]`` is its per-class count vector.

    Runs ``tries`` greedy passes over seeded group orders (the first largest-first) and keeps
    the one whose per-class split sizes deviate least from the targets, each class measured
    relative to its own total so the minority class weighs as much as the majority.
    """
    rng = np.random.default_rng(seed)
    names = sorted(group_counts)
    counts = np.stack([group_counts[g] for g in names]).astype(float)   # groups x classes
    totals = counts.sum(axis=0)
    targets = np.outer(fractions, totals)                                # splits x classes
    scale = np.maximum(totals, 1) ** 2
    covering = _covering_groups(counts, len(fractions))
    best, best_cost = None, np.inf
    for k in range(tries):
        order = rng.permutation(len(names))
        if k == 0:
            order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
        split = np.full(len(names), -1)
        current = np.zeros_like(targets)
        for g, s in covering:
            split[g] = s
            current[s] += counts[g]
        for g in order:
            if split[g] < 0:
                v = counts[g]
                growth = ((v * (2 * (current - targets) + v)) / scale).sum(axis=1)
                split[g] = int(np.argmin(growth))
                current[split[g]] += v
        cost = (((current - targets) ** 2) / scale).sum()
        if cost < best_cost - 1e-12:
            best, best_cost = split.copy(), cost
    return {name: int(s) for name, s in zip(names, best)}


def _covering_groups(counts: np.ndarray, n_splits: int) -> list[tuple[int, int]]:
    """(group, split) pairs giving every split one group of each class that has at least
    ``n_splits`` groups, rarest class first and its largest holders first (deterministic)."""
    chosen: dict[int, int] = {}
    for c in np.argsort([np.count_nonzero(counts[:, c]) for c in range(counts.shape[1])], kind="stable"):
        holders = [g for g in np.argsort(-counts[:, c], kind="stable") if counts[g, c] > 0]
        if len(holders) < n_splits:
            continue                                           # cannot cover; validate says so
        covered = {s for g, s in chosen.items() if counts[g, c] > 0}
        free = (g for g in holders if g not in chosen)
        for s in range(n_splits):
            if s not in covered:
                g = next(free, None)
                if g is not None:
                    chosen[g] = s
    return sorted(chosen.items())


def hash_unit(seed: int, source: str, group: str) -> float:
    """A group's place in [0, 1): a keyed hash of its source and name, nothing else."""
    digest = hmac.new(f"bcimaging-split:{seed}".encode(), f"{source}\0{group}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def stratum(counts: np.ndarray) -> str:
    return "both" if counts.min() > 0 else ("positive" if counts[1] else "negative")


def partition(group_source: dict[str, str], group_counts: dict[str, np.ndarray], fractions: tuple[float, ...],
              seed: int) -> tuple[dict[str, int], dict[str, str]]:
    """Each group's part (index into ``fractions``) and how each (source, stratum) was assigned:
    hash buckets in strata of at least HASH_MIN_GROUPS groups, the greedy balance below."""
    edges = np.cumsum(fractions)[:-1]
    strata = collections.defaultdict(list)
    for g in sorted(group_counts):
        strata[(group_source[g], stratum(group_counts[g]))].append(g)
    assigned, methods, small = {}, {}, collections.defaultdict(dict)
    for (source, kind), groups in sorted(strata.items()):
        if len(groups) >= HASH_MIN_GROUPS:
            methods[f"{source}/{kind}"] = f"hash buckets ({len(groups)} patients/groups)"
            for g in groups:
                assigned[g] = int(np.searchsorted(edges, hash_unit(seed, source, g), side="right"))
        else:
            methods[f"{source}/{kind}"] = f"greedy balance ({len(groups)} patients/groups, may change as data grow)"
            small[source].update({g: group_counts[g] for g in groups})
    for source, counts in sorted(small.items()):
        assigned.update(assign_groups(counts, fractions, seed))
    return assigned, methods


@dataclass
class Examples:
    """What a split needs to know of every record, and the group (patient or near-duplicate
    group) each record is split with."""
    metas: list[Meta]
    groups: list[str]
    spec: catalog.Modality
    near_duplicate_r: float
    merged_pairs: int
    stats: list[dict]            # components.imaging.inputstats of each record (the drift reference)


def load(examples: str | Path, near_duplicate_r: float | None = None) -> Examples:
    metas, thumbs, stats = [], [], []
    for raw in cli.progress(read_records(examples), desc="split: read", unit="rec"):
        r = schema.deserialize(raw)
        metas.append(Meta(r.patient_id, r.label, sha256_bytes(raw), r.modality, r.source, r.source_id))
        if near_duplicate_r is None:           # the modality's default, known from the first record
            near_duplicate_r = catalog.modality(r.modality).near_duplicate_r
        image = _decode(r.image_png)
        stats.append(inputstats.of(np.asarray(image)))
        if near_duplicate_r:
            thumbs.append(_thumbnail(image))
    modalities = {m.modality for m in metas}
    if len(modalities) != 1:
        raise cli.UserError(f"{examples} mixes modalities {sorted(modalities)}; split one modality at a time")
    spec = catalog.modality(modalities.pop())
    groups = [m.patient_id for m in metas]
    merged = 0
    if near_duplicate_r:
        thumbs = np.stack(thumbs)
        for source in sorted({m.source for m in metas}):      # frames of one source only
            idx = [i for i, m in enumerate(metas) if m.source == source]
            pairs = near_duplicate_pairs(thumbs[idx], near_duplicate_r)
            for i, g in zip(idx, merge_groups([groups[i] for i in idx], pairs)):
                groups[i] = g
            merged += len(pairs)
    return Examples(metas, groups, spec, near_duplicate_r or 0.0, merged, stats)


def group_table(ex: Examples, members: list[int] | None = None) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(group -> source, group -> per-class record counts) over ``members`` (default: all)."""
    source, counts = {}, collections.defaultdict(lambda: np.zeros(2, dtype=np.int64))
    for i in range(len(ex.metas)) if members is None else members:
        source[ex.groups[i]] = ex.metas[i].source
        counts[ex.groups[i]][ex.metas[i].label] += 1
    return source, dict(counts)


def check_fractions(fractions) -> tuple[float, ...]:
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions {fractions} must be three positive numbers summing to 1")
    return tuple(fractions)


def run(examples: str | Path, out: str | Path, seed: int = 0, fractions=(0.7, 0.15, 0.15),
        near_duplicate_r: float | None = None) -> dict:
    fractions = check_fractions(fractions)
    ex = load(examples, near_duplicate_r)
    assigned, methods = partition(*group_table(ex), fractions, seed)
    split_of = [assigned[g] for g in ex.groups]
    with staged_dir(out) as stage:
        return write_splits(examples, ex, split_of, stage, seed, fractions,
                            {"assignment": methods, "assignment_rule": f"keyed hash (seed {seed}) in strata of "
                             f">= {HASH_MIN_GROUPS} patients/groups, greedy balance below"})


def write_splits(examples: str | Path, ex: Examples, split_of: list[int], stage: Path, seed: int, fractions,
                 extra: dict) -> dict:
    """Write ``train/ validation/ test/`` (records in ``source_id`` order), ``patients.csv`` and
    ``manifest.json`` into ``stage``; ``split_of[i]`` is record i's split. Refuses a split that
    lacks a source: every split must hold every source for per-source results to exist."""
    sources = sorted({m.source for m in ex.metas})
    for s, name in enumerate(SPLITS):
        lacking = [src for src in sources if not any(x == s and m.source == src for x, m in zip(split_of, ex.metas))]
        if lacking:
            raise cli.UserError(f"the {name} split holds no record of source(s) {', '.join(lacking)}: too few "
                                "patients there for three splits; add data or choose another seed")
    by_split = collections.defaultdict(list)
    for i, s in enumerate(split_of):
        by_split[s].append(i)
    raw = list(read_records(examples))
    manifest_splits = {}
    for s, name in enumerate(SPLITS):
        members = sorted(by_split[s], key=lambda i: ex.metas[i].source_id)
        shards = max(1, math.ceil(len(members) / RECORDS_PER_SHARD))
        files = write_shards(cli.progress((raw[i] for i in members), total=len(members), desc=f"split: {name}",
                                          unit="rec"), stage / name, "part", shards)
        manifest_splits[name] = {**_counts(ex, members), "content_sha256": content_digest(ex.metas[i].digest for i in members),
                                 "files": [f.name for f in files],
                                 "sources": {src: _counts(ex, [i for i in members if ex.metas[i].source == src])
                                             for src in sources}}
    patients_csv = _patients_table(ex, split_of)
    write_text(stage / artifacts.PATIENTS, patients_csv)
    total = len(ex.metas)
    manifest = {
        "modality": ex.spec.name,
        "seed": seed,
        "fractions_requested": list(fractions),
        "fractions_achieved": {n: round(manifest_splits[n]["records"] / total, 4) for n in SPLITS},
        "records": total,
        "patients": len({m.patient_id for m in ex.metas}),
        "sources": sources,
        "grouping": "patient_id within its source" + (
            f" + near-duplicate thumbnails r>={ex.near_duplicate_r}" if ex.near_duplicate_r else ""),
        "near_duplicate_pairs_merged": ex.merged_pairs,
        **extra,
        "examples_content_sha256": content_digest(m.digest for m in ex.metas),
        "patients_csv_sha256": sha256_bytes(patients_csv.encode()),
        "splits": manifest_splits,
        # what the gateway's served inputs are compared with (pipelines.monitoring.drift)
        "input_reference": {"train": inputstats.reference([ex.stats[i] for i in by_split[0]])},
    }
    write_json(stage / artifacts.MANIFEST, manifest)
    return manifest


def _counts(ex: Examples, members: list[int]) -> dict:
    labels = [ex.metas[i].label for i in members]
    return {"records": len(members),
            "labels": {ex.spec.label_names[k]: labels.count(k) for k in (0, 1)},
            "positive_ratio": round(labels.count(1) / len(labels), 4) if labels else None,
            "patients": len({ex.metas[i].patient_id for i in members}),
            "groups": len({ex.groups[i] for i in members})}


def _patients_table(ex: Examples, split_of: list[int]) -> str:
    """patient_id, its source, the group it was split with (itself, or the near-duplicate group
    it joined: the unit a cluster bootstrap resamples), its split and label counts."""
    rows = collections.defaultdict(lambda: [None, None, None, 0, 0])
    for m, s, g in zip(ex.metas, split_of, ex.groups):
        row = rows[m.patient_id]
        row[0], row[1], row[2] = m.source, g, SPLITS[s]
        row[3 + m.label] += 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "source", "group", "split", "negatives", "positives"])
    for p in sorted(rows):
        w.writerow([p, *rows[p]])
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.split", description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", required=True, help="folder of TFRecords from components.extract")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fractions", default="0.7,0.15,0.15", help="train,validation,test (default 0.7,0.15,0.15)")
    ap.add_argument("--near-duplicate-r", type=float, default=None,
                    help="merge images whose 32x32 thumbnails correlate >= r into one group "
                         "(0: off; default: the modality's, 0.97 for ultrasound, off otherwise)")
    return ap


def _cli(args, _):
    fractions = tuple(float(x) for x in args.fractions.split(","))
    manifest = run(args.examples, args.out, args.seed, fractions, args.near_duplicate_r)
    print(json.dumps({n: {k: manifest["splits"][n][k] for k in ("records", "patients", "positive_ratio")}
                      for n in SPLITS}))


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), _cli))
