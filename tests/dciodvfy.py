"""dciodvfy for tests: what the dicom3tools validator finds wrong with a DICOM Part 10 file.

dciodvfy checks an instance against its IOD in the standard (modules, types, VRs, values,
SR relationships). It is Debian's ``dicom3tools`` (``.ci/run`` installs it); where it is
missing, the tests that need it skip saying how to install it. Usage::

    from tests import dciodvfy

    @dciodvfy.required
    def test_valid():
        found = dciodvfy.validate(data)
        assert not found.errors, found.describe()
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

INSTALL_HINT = "dciodvfy is not installed: apt-get install dicom3tools"


@dataclass(frozen=True)
class Findings:
    errors: list[str]
    warnings: list[str]

    def describe(self) -> str:
        """Every line dciodvfy printed, errors first: an assertion message that explains itself."""
        lines = [f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) from dciodvfy"]
        return "\n".join(lines + self.errors + self.warnings)


def installed() -> bool:
    return shutil.which("dciodvfy") is not None


required = pytest.mark.skipif(not installed(), reason=INSTALL_HINT)


def validate(data: bytes, timeout_s: float = 60) -> Findings:
    """dciodvfy's errors and warnings on ``data`` (Part 10 bytes). It reads a file: from a pipe
    it finds no object. ``-new`` puts the path of each offending attribute in the message."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as file:
        file.write(data)
        file.flush()
        run = subprocess.run(["dciodvfy", "-new", file.name], capture_output=True, timeout=timeout_s)
    lines = (run.stdout + run.stderr).decode("utf-8", "replace").splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    if run.returncode != 0 and not errors:     # it stopped without saying why (a crash, a signal)
        errors.append(f"Error - dciodvfy exited with status {run.returncode}")
    return Findings(errors, warnings)
