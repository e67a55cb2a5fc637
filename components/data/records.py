"""TFRecord files on disk: listing shards, reading records, writing a split's shards."""
from __future__ import annotations

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
