"""Reading DICOM without letting pydicom speak: its warnings and log lines quote header values
and file paths, which are PHI."""
from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet_pydicom():
    """pydicom's warnings and log lines quote header values and file paths ("Invalid value for
    VR DA: '1970-01-01'", "... in file <path>"): around the DICOM reader they would carry PHI
    into the step's logs, so they are dropped; the reader's own reasons say what went wrong.
    Records of pydicom's child loggers (``pydicom.pixels...``) stop at the ``pydicom`` logger."""
    logger = logging.getLogger("pydicom")
    sink = logging.NullHandler()
    disabled, propagate = logger.disabled, logger.propagate
    logger.disabled, logger.propagate = True, False
    logger.addHandler(sink)          # a handler found: Python's last-resort stderr handler stays out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(sink)
        logger.disabled, logger.propagate = disabled, propagate
