"""TFRecord files on disk: listing shards, reading records, writing a split's shards."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

SUFFIXES = (".tfrecord", ".tfrecord.gz")


def tfrecord_files(directory: str | os.PathLike) -> list[Path]:
    """The TFRecord shards directly inside ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory of TFRecord files")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))


def compression(path: Path) -> str:
    return "GZIP" if path.name.endswith(".gz") else ""


def read_records(directory: str | os.PathLike) -> Iterator[bytes]:
    """Every serialized record of every shard in ``directory``, shards in name order."""
    import tensorflow as tf

    files = tfrecord_files(directory)
    if not files:
        raise FileNotFoundError(f"no *.tfrecord or *.tfrecord.gz files in {directory}")
    for path in files:
        for raw in tf.data.TFRecordDataset(str(path), compression_type=compression(path)):
            yield raw.numpy()


def write_shards(records: Iterable[bytes], directory: Path, prefix: str, num_shards: int) -> list[Path]:
    """Write ``records`` round-robin into ``num_shards`` gzip shards named like Beam's."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord.gz" for i in range(num_shards)]
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [tf.io.TFRecordWriter(str(p), options) for p in paths]
    try:
        for i, record in enumerate(records):
            writers[i % num_shards].write(record)
    finally:
        for w in writers:
            w.close()
    return paths


def content_digest(record_digests: Iterable[str]) -> str:
    """Order-independent sha256 of a set of records, from each record's own sha256 hex."""
    h = hashlib.sha256()
    for d in sorted(record_digests):
        h.update(d.encode())
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(path: str | os.PathLike, exclude: Iterable[str] = ()) -> dict[str, str]:
    """sha256 of every file under ``path`` (a file or a folder), keyed by its relative POSIX
    path ('.' for a single file); hidden staging leftovers and ``exclude`` paths aside."""
    path = Path(path)
    if path.is_file():
        return {".": sha256_file(path)}
    skip = set(exclude)
    return {rel: sha256_file(f) for f in sorted(path.rglob("*"))
            if f.is_file() and (rel := f.relative_to(path).as_posix()) not in skip}


def tree_sha256(path: str | os.PathLike, exclude: Iterable[str] = ()) -> str:
    """One sha256 over a file or a whole folder: every file's relative path and bytes."""
    return combined_sha256(file_digests(path, exclude))


def combined_sha256(digests: dict[str, str]) -> str:
    """One sha256 over ``file_digests``' answer (or a part of it), in its order: paths and
    contents."""
    h = hashlib.sha256()
    for rel, digest in digests.items():
        h.update(rel.encode() + b"\0" + bytes.fromhex(digest))
    return h.hexdigest()

