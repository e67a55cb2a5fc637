"""The ML steps of the product: each module is one step with a plain ``run(...)`` and a
``python -m components.<step>`` command line, so the same code runs in a container, in a
local pipeline run and in a unit test."""

import os as _os

# TensorFlow prints C++ start-up notices before anything can configure it (on a CPU-only
# machine, "Unable to register cuDNN/cuBLAS factory" at ERROR level); real failures still
# raise Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0 to see them all.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
