"""Split: patient-grouped, stratified, reproducible."""
import csv
import json

import numpy as np
import pytest

from components import extract, sample_data, split
from components.core import digests
from components.data import records, schema
from tests.conftest import SHARED, needs_shared_datasets, run_cli


def _patients_by_split(splits_dir):
    seen = {}
    for name in split.SPLITS:
        seen[name] = {schema.deserialize(r).patient_id for r in records.read_records(splits_dir / name)}
    return seen


def _assert_disjoint(seen):
    for a in split.SPLITS:
        for b in split.SPLITS:
            if a < b:
                assert not seen[a] & seen[b], f"patients in both {a} and {b}: {sorted(seen[a] & seen[b])[:5]}"


def test_assign_groups_covers_every_class_and_hits_fractions():
    rng = np.random.default_rng(0)
    groups = {f"p{i}": np.array([rng.integers(0, 8), rng.integers(0, 3)]) + [1, 0] for i in range(300)}
    assigned = split.assign_groups(groups, (0.7, 0.15, 0.15), seed=0)
    per_split = np.zeros((3, 2))
    for g, s in assigned.items():
        per_split[s] += groups[g]
    shares = per_split.sum(axis=1) / per_split.sum()
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.02)
    positive_share = per_split[:, 1] / per_split.sum(axis=1)
    assert np.ptp(positive_share) < 0.03
    assert assigned == split.assign_groups(groups, (0.7, 0.15, 0.15), seed=0)


def test_a_rare_class_held_by_three_patients_reaches_every_split():
    groups = {"a": np.array([900, 100]), "b": np.array([500, 50]), "c": np.array([400, 80])}
    groups.update({f"pos{i}": np.array([0, 60 + i]) for i in range(10)})
    assigned = split.assign_groups(groups, (0.7, 0.15, 0.15), seed=5)
    assert sorted(assigned[g] for g in "abc") == [0, 1, 2]


def test_near_duplicates_are_merged_into_one_group():
    thumbs = np.eye(4, dtype=np.float32)
    thumbs = np.vstack([thumbs, thumbs[1] * 0.999 + 0.001])     # image 4 ~ image 1
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    pairs = split.near_duplicate_pairs(thumbs, 0.97)
    assert pairs == [(1, 4)]
    assert split.merge_groups(["a", "b", "c", "d", "e"], pairs) == ["a", "b", "c", "d", "b"]


def test_sample_histopathology_split_is_patient_wise_and_byte_reproducible(sample_sources, tmp_path):
    run_cli("components.extract", "--modality", "histopathology", "--source",
            str(sample_sources["histopathology"]), "--out", str(tmp_path / "ex"))
    run_cli("components.split", "--examples", str(tmp_path / "ex"), "--out", str(tmp_path / "s1"), "--seed", "4")
    split.run(tmp_path / "ex", tmp_path / "s2", seed=4)
    assert (tmp_path / "s1" / "manifest.json").read_bytes() == (tmp_path / "s2" / "manifest.json").read_bytes()
    assert (tmp_path / "s1" / "patients.csv").read_bytes() == (tmp_path / "s2" / "patients.csv").read_bytes()
    _assert_disjoint(_patients_by_split(tmp_path / "s1"))
    manifest = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    assert sum(s["records"] for s in manifest["splits"].values()) == manifest["records"] == 60
    for name in split.SPLITS:
        recs = [schema.deserialize(r) for r in records.read_records(tmp_path / "s1" / name)]
        assert manifest["splits"][name]["content_sha256"] == digests.content_digest(
            digests.sha256_bytes(schema.serialize(r)) for r in recs)


@needs_shared_datasets()
def test_real_idc_tree_no_patient_in_two_splits_and_same_seed_same_manifest(real_idc_examples, tmp_path):
    a = split.run(real_idc_examples, tmp_path / "a", seed=11)
    split.run(real_idc_examples, tmp_path / "b", seed=11)
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    seen = _patients_by_split(tmp_path / "a")
    _assert_disjoint(seen)
    assert set().union(*seen.values()) == {f"idc/{p.name}" for p in (SHARED / "idc").iterdir() if p.is_dir()}
    assert len(set().union(*seen.values())) == 16 and a["records"] == 9984
    # ten patients have IDC-negative patches (a stratum too small for hash buckets): every split gets some
    negatives = [r["split"] for r in csv.DictReader((tmp_path / "a" / "patients.csv").open()) if int(r["negatives"]) > 0]
    assert len(negatives) == 10 and set(negatives) == set(split.SPLITS)
    assert a["assignment"]["idc/both"].startswith("greedy balance")


def _metas(n_patients: int, start: int = 0, sources=("a", "b")) -> "split.Examples":
    rng = np.random.default_rng(start)
    metas, groups = [], []
    for k in range(start, start + n_patients):
        source = sources[k % len(sources)]
        label = int(rng.random() < 0.35)
        for r in range(1 + k % 3):
            metas.append(split.Meta(f"{source}/p{k}", label, f"d{k}-{r}", "ultrasound", source, f"{source}/p{k}/{r}"))
            groups.append(f"{source}/p{k}")
    return metas, groups


def test_adding_patients_never_moves_an_earlier_one():
    """The keyed-hash assignment of a patient depends on its source and id alone: a second data
    drop of 40 % more patients leaves every earlier patient in its split (no test patient moves
    into train), and the strata large enough for hashing are assigned by it."""
    from types import SimpleNamespace

    def assign(metas, groups):
        ex = SimpleNamespace(metas=metas, groups=groups)
        return split.partition(*split.group_table(ex), (0.7, 0.15, 0.15), seed=3)

    metas, groups = _metas(400)
    before, methods = assign(metas, groups)
    assert all(m.startswith("hash buckets") for m in methods.values()), methods
    more, more_groups = _metas(160, start=400)
    after, _ = assign(metas + more, groups + more_groups)
    assert {g: after[g] for g in before} == before
    shares = np.bincount(list(after.values()), minlength=3) / len(after)
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.05)
    # another seed is another key: a different assignment
    other, _ = split.partition(*split.group_table(SimpleNamespace(metas=metas, groups=groups)), (0.7, 0.15, 0.15), seed=4)
    assert other != before


def test_every_split_holds_every_source_and_no_patient_is_in_two(sample_sources, tmp_path):
    root = tmp_path / "data"
    a = sample_data.run("ultrasound", root / "a", count=40, seed=2)
    b = sample_data.run("ultrasound", root / "b", count=40, seed=3)
    extract.run("ultrasound", [{"name": "a", "path": str(a)}, {"name": "b", "path": str(b)}], tmp_path / "ex")
    manifest = split.run(tmp_path / "ex", tmp_path / "s", seed=0)
    for name in split.SPLITS:
        assert set(manifest["splits"][name]["sources"]) == {"a", "b"}
        assert all(c["records"] > 0 and all(c["labels"].values()) for c in manifest["splits"][name]["sources"].values())
    _assert_disjoint(_patients_by_split(tmp_path / "s"))
    # records are written in source_id order: the same examples give the same bytes
    ids = [schema.deserialize(r).source_id for r in records.read_records(tmp_path / "s" / "train")]
    assert ids == sorted(ids)
    # a source too small for three splits is refused with the reason
    tiny = sample_data.run("ultrasound", root / "tiny", count=12, seed=4)
    for f in sorted(tiny.rglob("*.*"))[2:]:
        f.unlink()
    extract.run("ultrasound", [{"name": "a", "path": str(a)}, {"name": "tiny", "path": str(tiny)}], tmp_path / "ex2")
    with pytest.raises(Exception, match="holds no record of source"):
        split.run(tmp_path / "ex2", tmp_path / "s2")
