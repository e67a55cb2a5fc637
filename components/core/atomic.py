"""Publish outputs atomically: a step writes into a hidden sibling and renames it at the end,
so a reader (a later step, a model server, an auditor) never sees half an output."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, keep_failed_as: str | None = None) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``out`` when the block succeeds.

    An existing ``out`` is replaced whole (a re-run is idempotent). When the block raises, the
    staging directory is removed, or kept beside ``out`` under the suffix ``keep_failed_as`` so
    a person can inspect what was rejected.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        if keep_failed_as:
            failed = out.with_name(out.name + keep_failed_as)
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(stage, failed)
        else:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_dir(stage, out)


def replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an old ``out`` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "dir")
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False, mode: int | None = None) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place. ``durable``:
    the file and its folder are fsync'ed, so the new content survives a crash once this returns
    (a record of decisions); ``mode``: its permission bits (mkstemp makes it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str, durable: bool = False, mode: int | None = None) -> None:
    write_bytes(path, text.encode(), durable, mode)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(tree: str | os.PathLike, file_mode: int = 0o644, dir_mode: int = 0o755) -> None:
    """Every file and folder of ``tree`` fsync'ed, children before parents, with these modes (a
    reader running under another uid, such as a model server, must read them)."""
    for folder, _, files in os.walk(tree, topdown=False):
        for name in files:
            path = Path(folder) / name
            os.chmod(path, file_mode)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(folder, dir_mode)
        fsync_dir(folder)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
