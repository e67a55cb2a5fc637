"""Split: extracted examples -> train/validation/test, stratified by label, grouped by patient.

No patient is in two splits. Each class with at least three patients first gets one patient in
every split, so no split lacks a class when the data allow it; the other patients are assigned
greedily to the split whose per-class counts fall furthest below target (best of several
seeded orders). The same examples and seed give byte-identical outputs and manifest.

Optionally (``--near-duplicate-r``), images whose 32x32 grayscale thumbnails correlate at or
above r are merged into one group first: BUSI-style datasets file near-identical frames of one
lesion as separate images, sometimes under different classes, which would leak across splits.

    python -m components.split --examples DIR --out DIR2 [--seed S]
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import artifacts, catalog, cli, schema
from components.atomic import staged_dir, write_json, write_text
from components.records import content_digest, read_records, sha256_bytes, sha256_file, write_shards

SPLITS = ("train", "validation", "test")
RECORDS_PER_SHARD = 4096


@dataclass
class Meta:
    patient_id: str
    label: int
    digest: str
    modality: str


def _thumbnail(png: bytes, side: int = 32) -> np.ndarray:
    from PIL import Image

    v = np.asarray(Image.open(io.BytesIO(png)).convert("L").resize((side, side), Image.BILINEAR), np.float32).ravel()
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


def run(examples: str | Path, out: str | Path, seed: int = 0, fractions=(0.7, 0.15, 0.15),
        near_duplicate_r: float | None = None) -> dict:
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions {fractions} must be three positive numbers summing to 1")
    metas, thumbs = [], []
    for raw in cli.progress(read_records(examples), desc="split: read", unit="rec"):
        r = schema.deserialize(raw)
        metas.append(Meta(r.patient_id, r.label, sha256_bytes(raw), r.modality))
        if near_duplicate_r is None:           # the modality's default, known from the first record
            near_duplicate_r = catalog.modality(r.modality).near_duplicate_r
        if near_duplicate_r:
            thumbs.append(_thumbnail(r.image_png))
    modalities = {m.modality for m in metas}
    if len(modalities) != 1:
        raise cli.UserError(f"{examples} mixes modalities {sorted(modalities)}; split one modality at a time")
    spec = catalog.modality(modalities.pop())
    groups = [m.patient_id for m in metas]
    merged_pairs = []
    if near_duplicate_r:
        merged_pairs = near_duplicate_pairs(np.stack(thumbs), near_duplicate_r)
        groups = merge_groups(groups, merged_pairs)
    counts: dict[str, np.ndarray] = collections.defaultdict(lambda: np.zeros(2, dtype=np.int64))
    for g, m in zip(groups, metas):
        counts[g][m.label] += 1
    assignment = assign_groups(dict(counts), tuple(fractions), seed)
    split_of = [assignment[g] for g in groups]

    with staged_dir(out) as stage:
        manifest_splits = {}
        for s, name in enumerate(SPLITS):
            members = [i for i, x in enumerate(split_of) if x == s]
            shards = max(1, math.ceil(len(members) / RECORDS_PER_SHARD))
            wanted = set(members)
            stream = (raw for i, raw in enumerate(read_records(examples)) if i in wanted)
            files = write_shards(cli.progress(stream, total=len(members), desc=f"split: {name}", unit="rec"),
                                 stage / name, "part", shards)
            labels = [metas[i].label for i in members]
            manifest_splits[name] = {
                "records": len(members),
                "labels": {spec.label_names[k]: labels.count(k) for k in (0, 1)},
                "positive_ratio": round(labels.count(1) / len(labels), 4) if labels else None,
                "patients": len({metas[i].patient_id for i in members}),
                "groups": len({groups[i] for i in members}),
                "content_sha256": content_digest(metas[i].digest for i in members),
                "files": [f.name for f in files],
            }
        patients_csv = _patients_table(metas, split_of, groups)
        write_text(stage / artifacts.PATIENTS, patients_csv)
        total = len(metas)
        manifest = {
            "modality": spec.name,
            "seed": seed,
            "fractions_requested": list(fractions),
            "fractions_achieved": {n: round(manifest_splits[n]["records"] / total, 4) for n in SPLITS},
            "records": total,
            "patients": len({m.patient_id for m in metas}),
            "grouping": "patient_id" + (f" + near-duplicate thumbnails r>={near_duplicate_r}" if near_duplicate_r else ""),
            "near_duplicate_pairs_merged": len(merged_pairs),
            "examples_content_sha256": content_digest(m.digest for m in metas),
            "patients_csv_sha256": sha256_bytes(patients_csv.encode()),
            "splits": manifest_splits,
        }
        write_json(stage / artifacts.MANIFEST, manifest)
    return manifest


def _patients_table(metas: list[Meta], split_of: list[int], groups: list[str]) -> str:
    """patient_id, the group it was split with (itself, or the near-duplicate group it joined:
    the unit a cluster bootstrap resamples), its split and label counts."""
    rows = collections.defaultdict(lambda: [None, None, 0, 0])
    for m, s, g in zip(metas, split_of, groups):
        row = rows[m.patient_id]
        row[0], row[1] = g, SPLITS[s]
        row[2 + m.label] += 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "group", "split", "negatives", "positives"])
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
