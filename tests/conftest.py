"""Shared fixtures: sample datasets made once per session, the real datasets when present."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import extract, sample_data, split, stain

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))


def needs_shared_datasets():
    return pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not present at {SHARED}")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the repository root, as a user would."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("samples")
    return {m: sample_data.run(m, base / m, count=60, seed=1) for m in ("mammography", "ultrasound", "histopathology")}


@pytest.fixture(scope="session")
def sample_splits(sample_sources, tmp_path_factory) -> dict[str, Path]:
    """Training-ready splits per modality, as a pipeline makes them: histopathology's are
    stain-normalized (``splits-stained``); the raw splits stay beside them (``splits``)."""
    base = tmp_path_factory.mktemp("sample-splits")
    out = {}
    for modality, source in sample_sources.items():
        extract.run(modality, source, base / modality / "examples")
        split.run(base / modality / "examples", base / modality / "splits", seed=1)
        out[modality] = base / modality / "splits"
        if modality == "histopathology":
            stain.run(out[modality], base / modality / "splits-stained")
            out[modality] = base / modality / "splits-stained"
    return out
