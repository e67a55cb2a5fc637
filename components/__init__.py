"""The ML steps of the product and the libraries they are made of.

Each module beside the rooms is one step with a plain ``run(...)`` and a
``python -m components.<step>`` command line, so the same code runs in a container, in a local
pipeline run and in a unit test. The rooms hold the libraries, and imports run one way:
``core`` (vocabulary and plumbing) < ``imaging`` (untrusted bytes to pixels) < ``data`` (sources to
records) < ``model`` (Keras and the serving graph) < ``evaluation`` (measuring models) < the steps.
"""

import os as _os

# TensorFlow prints C++ start-up notices before anything can configure it (on a CPU-only
# machine, "Unable to register cuDNN/cuBLAS factory" at ERROR level); real failures still
# raise Python exceptions. Set TF_CPP_MIN_LOG_LEVEL=0 to see them all.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings as _warnings

# google-api-core / google-auth (pulled in by apache-beam[gcp]) warn at import about future
# Python and grpcio support; nothing a user of this product can act on.
_warnings.filterwarnings("ignore", category=FutureWarning,
                         message=r".*(Google will stop supporting|does not support Post-Quantum)")
