"""Step caching for local runs. kfp 2.13's local runner has no cache (on a cluster, KFP's own
caching applies), so each step looks itself up here before working.

The key is a sha256 over the step's name, the code a step runs (``STEP_MODULES``: the step layer
and the product modules the step imports, transitively), the
installed dependencies (every distribution and its version: the lock as it was installed, in a
checkout or an image), its parameters and the content of its input artifacts. An entry remembers where the step's outputs
were written and their sha256; a hit copies them into the new run only while they still hash
to what was recorded, so an edited or deleted earlier run is a miss, never a wrong result.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

from components.core.atomic import write_json
from components.core.digests import tree_sha256

PACKAGES = ("components", "pipelines", "serving")
# The step layer every cached step runs through, hashed as files.
STEP_LAYER = ("pipelines/steps.py", "pipelines/ops.py", "pipelines/cache.py")
# The modules each cached step runs; its key hashes them and every product module they import, at
# module level or inside a function, so a change to one reader re-runs the steps that read through
# it, not every evaluation. Not the orchestration around the steps (study, report, demo, submit,
# audit, the local runner) nor the model server and gateway: mending those must not retrain a study.
STEP_MODULES = {
    "extract": ("components.extract",), "split": ("components.split",), "stain": ("components.stain",),
    "validate": ("components.validate",), "baselines": ("components.baseline",), "train": ("components.train",),
    "evaluate": ("components.evaluate", "components.export"), "gather": (), "ensemble": ("components.ensemble",),
    "export": ("components.export",), "folds": ("components.crossval",), "pool": ("components.crossval",),
}
ROOT = Path(__file__).resolve().parents[1]


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(module: str, path: Path) -> set[str]:
    """The product modules ``module`` imports anywhere in its file (and the packages above them)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[:-node.level] if path.name != "__init__.py" else module.split(".")[:len(module.split(".")) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if _source(m)}


@functools.lru_cache(maxsize=None)
def closure(modules: tuple[str, ...]) -> tuple[Path, ...]:
    """The source files of ``modules`` and of every product module they import, transitively."""
    seen, todo = {}, list(modules)
    while todo:
        module = todo.pop()
        if module in seen or (path := _source(module)) is None:
            continue
        seen[module] = path
        todo += sorted(_imported(module, path) - set(seen))
    return tuple(sorted(set(seen.values())))


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=2)
def code_sha256(parts: tuple[str, ...] = PACKAGES) -> str:
    """sha256 of this product's Python sources (or of ``parts``: packages and modules), as
    installed (the container image or a checkout)."""
    paths = []
    for part in parts:
        paths += [ROOT / part] if part.endswith(".py") else sorted((ROOT / part).rglob("*.py"))
    return _hash_files(paths)


@functools.lru_cache(maxsize=None)
def step_code_sha256(step: str) -> str:
    """sha256 of the code ``step`` runs: the step layer and the closure of its modules."""
    return _hash_files([ROOT / p for p in STEP_LAYER] + [p for p in closure(STEP_MODULES[step])
                                                          if p.relative_to(ROOT).as_posix() not in STEP_LAYER])


def environment_lines() -> list[str]:
    """``name==version`` of every installed distribution, and the Python version."""
    import importlib.metadata
    import sys

    names = {f"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}" for d in importlib.metadata.distributions()}
    return [f"python=={sys.version.split()[0]}", *sorted(names)]


@functools.lru_cache(maxsize=1)
def environment_sha256() -> str:
    return hashlib.sha256("\n".join(environment_lines()).encode()).hexdigest()


def fingerprint(step: str) -> dict[str, str]:
    """What a step's result depends on besides its parameters and inputs: its code and the dependencies."""
    return {"code": step_code_sha256(step), "environment": environment_sha256()}


def step_key(step: str, params: dict, inputs: dict[str, str], environment: dict[str, str] | None = None) -> str:
    described = {"step": step, **(environment or fingerprint(step)), "params": params,
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
