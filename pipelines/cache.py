"""Step caching for local runs. kfp 2.13's local runner has no cache (on a cluster, KFP's own
caching applies), so each step looks itself up here before working.

The key is a sha256 over the step's name, the code a step runs (``STEP_CODE``), the
installed dependencies (every distribution and its version: the lock as it was installed, in a
checkout or an image), its parameters and the content of its input artifacts. An entry remembers where the step's outputs
were written and their sha256; a hit copies them into the new run only while they still hash
to what was recorded, so an edited or deleted earlier run is a miss, never a wrong result.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from components.atomic import write_json
from components.records import tree_sha256

PACKAGES = ("components", "pipelines", "serving")
# What a step's result can depend on: the components, the model repository push writes to and
# the pipelines' step layer; not the orchestration around the steps (study, report, demo, submit,
# audit, the local runner) nor the model server and gateway: regenerating a report or mending the
# server must not retrain a study.
STEP_CODE = ("components", "serving/repository.py", "serving/protos.py",
             "pipelines/steps.py", "pipelines/ops.py", "pipelines/cache.py")


@functools.lru_cache(maxsize=2)
def code_sha256(parts: tuple[str, ...] = PACKAGES) -> str:
    """sha256 of this product's Python sources (or of ``parts``: packages and modules), as
    installed (the container image or a checkout)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for part in parts:
        paths = [root / part] if part.endswith(".py") else sorted((root / part).rglob("*.py"))
        for path in paths:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def environment_lines() -> list[str]:
    """``name==version`` of every installed distribution, and the Python version."""
    import importlib.metadata
    import sys

    names = {f"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}" for d in importlib.metadata.distributions()}
    return [f"python=={sys.version.split()[0]}", *sorted(names)]


@functools.lru_cache(maxsize=1)
def environment_sha256() -> str:
    return hashlib.sha256("\n".join(environment_lines()).encode()).hexdigest()


def fingerprint() -> dict[str, str]:
    """What a result depends on besides its parameters and inputs: the code and the dependencies."""
    return {"code": code_sha256(STEP_CODE), "environment": environment_sha256()}


def step_key(step: str, params: dict, inputs: dict[str, str], environment: dict[str, str] | None = None) -> str:
    described = {"step": step, **(environment or fingerprint()), "params": params,
                 "inputs": {name: tree_sha256(path) for name, path in sorted(inputs.items())}}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def cached(cache_dir: str, step: str, params: dict, inputs: dict[str, str], outputs: dict[str, str],
           compute: Callable[[], dict]) -> tuple[dict, bool]:
    """Run ``compute`` (which writes ``outputs`` and returns a JSON-able result) unless an earlier
    run with the same key left outputs that are still intact. Returns (result, was_cached)."""
    if not cache_dir:
        return compute(), False
    key = step_key(step, params, inputs)
    entry_path = Path(cache_dir) / f"{key}.json"
    if entry_path.exists():
        entry = json.loads(entry_path.read_text())
        earlier = {name: Path(o["path"]) for name, o in entry["outputs"].items()}
        if set(earlier) == set(outputs) and all(
                p.exists() and tree_sha256(p) == entry["outputs"][name]["sha256"] for name, p in earlier.items()):
            for name, path in earlier.items():
                _copy(path, Path(outputs[name]))
            return entry["result"], True
    result = compute()
    write_json(entry_path, {"step": step, "key": key, "result": result, "outputs": {
        name: {"path": str(Path(path).resolve()), "sha256": tree_sha256(path)} for name, path in outputs.items()}})
    return result, False
