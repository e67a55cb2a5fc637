"""The ML steps of the product: each module is one step with a plain ``run(...)`` and a
``python -m components.<step>`` command line, so the same code runs in a container, in a
local pipeline run and in a unit test."""

import os as _os

# TensorFlow prints pages of C++ start-up notices (CUDA plugins, CPU flags) before anything
# can configure it; hide INFO/WARNING unless the user asked for them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
