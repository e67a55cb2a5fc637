"""sha256 digests of bytes, files, folders and sets of records: how artifacts, exports, caches
and audits name content."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable


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

