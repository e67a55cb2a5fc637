"""Stain: Macenko H&E normalization (``components.data.macenko``), reference fitted on train
tiles, applied to every split.

    python -m components.stain --splits DIR2 --out DIR4
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from components.core import artifacts, cli
from components.data import schema
from components.core.atomic import staged_dir, write_json
from components.data.records import read_records, tfrecord_files, write_shards
from components.core.digests import content_digest, sha256_bytes
from components.data.macenko import StainReference, fit_reference, normalize
from components.split import SPLITS


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _encode(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _before_after(split_dir: Path, reference: StainReference, path: Path, n: int = 8, side: int = 96) -> None:
    """A picture for people: top row as scanned, bottom row normalized (first n test tiles)."""
    tiles = []
    for raw in read_records(split_dir):
        tiles.append(_decode(schema.deserialize(raw).image_png))
        if len(tiles) == n:
            break
    if not tiles:
        return
    grid = Image.new("RGB", (side * len(tiles), 2 * side), "white")
    for i, tile in enumerate(tiles):
        grid.paste(Image.fromarray(tile).resize((side, side)), (i * side, 0))
        grid.paste(Image.fromarray(normalize(tile, reference)[0]).resize((side, side)), (i * side, side))
    grid.save(path)


def run(splits: str | Path, out: str | Path, reference_tiles: int = 500, seed: int = 0) -> dict:
    splits = Path(splits)
    for split in SPLITS:
        if not (splits / split).is_dir():
            raise FileNotFoundError(f"{splits / split} is missing: --splits must be the output of components.split")
    train = [schema.deserialize(r).image_png for r in read_records(splits / "train")]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train), size=min(reference_tiles, len(train)), replace=False) if train else []
    reference = fit_reference([_decode(train[i]) for i in sorted(chosen)])
    del train
    manifest = artifacts.read_json(splits, artifacts.MANIFEST, default={})
    outcome = {"normalized": 0, "reference-stains": 0, "background": 0}
    with staged_dir(out) as stage:
        for split in SPLITS:
            digests = []

            def normalized_records():
                for raw in read_records(splits / split):
                    record = schema.deserialize(raw)
                    rgb, how = normalize(_decode(record.image_png), reference)
                    outcome[how] += 1
                    new = schema.serialize(record.with_image(_encode(rgb), rgb.shape[0], rgb.shape[1]))
                    digests.append(sha256_bytes(new))
                    yield new

            n_shards = len(tfrecord_files(splits / split))
            total = manifest.get("splits", {}).get(split, {}).get("records")
            files = write_shards(cli.progress(normalized_records(), total=total, desc=f"stain: {split}", unit="tile"),
                                 stage / split, "part", n_shards)
            if manifest:
                manifest["splits"][split]["content_sha256"] = content_digest(digests)
                manifest["splits"][split]["files"] = [f.name for f in files]
        _before_after(splits / "test", reference, stage / "before_after.png")
        if (splits / artifacts.PATIENTS).exists():
            shutil.copy(splits / artifacts.PATIENTS, stage / artifacts.PATIENTS)
        stain = {"method": "macenko", "reference_fitted_on": f"{len(chosen)} train tiles (seed {seed})",
                 **reference.to_json(), "tiles": outcome}
        manifest["stain"] = stain
        write_json(stage / artifacts.MANIFEST, manifest)
        write_json(stage / "stain_reference.json", stain)
    return stain


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.stain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", required=True, help="output folder of components.split")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference-tiles", type=int, default=500, help="train tiles sampled to fit the reference")
    ap.add_argument("--seed", type=int, default=0)
    return ap


if __name__ == "__main__":
    raise SystemExit(cli.main(build_parser(), lambda a, _: print(json.dumps(run(a.splits, a.out, a.reference_tiles, a.seed)))))
