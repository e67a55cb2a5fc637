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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
