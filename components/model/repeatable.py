"""Repeatable CPU arithmetic for a process that trains or scores models: the same inputs give
the same bits on every run, however busy the machine is.

- Eigen's kernels, not oneDNN's: two identical one-thread trainings with oneDNN parted at their
  63rd step, and oneDNN picks other kernels on another instruction set. TensorFlow reads the
  switch once, as it loads, so it is set before the import (``before_tensorflow``).
- A fixed number of threads per op (``pin_threads``): a reduction split over another number of
  threads adds up in another order.
- Denormals flushed on the calling thread too (``flush_denormals``). TensorFlow's own pool
  threads flush denormal floats to zero (FTZ and DAZ in the SSE control register), but a
  ``tf.function``'s cheap ops run inline on the thread that called it, which does not, and which
  ops run inline follows the executor's timing of them: on a loaded machine an op moves between
  threads, and a gradient that was a denormal becomes a zero. Found when two studies run side by
  side parted in the fourth decimal of VGG16's loss in their second epoch; with every thread
  flushing, where an op runs no longer changes its result.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import struct
import sys

_FTZ, _DAZ = 0x8000, 0x0040
_MXCSR_OFFSET = 28       # glibc's x86-64 fenv_t: the x87 environment (28 bytes), then mxcsr


def before_tensorflow() -> None:
    """Eigen's CPU kernels for this process, if TensorFlow is not loaded yet (see ``onednn``)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def onednn() -> bool:
    """Whether this process's TensorFlow runs oneDNN's kernels (recorded with a training)."""
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())


def pin_threads(tf, threads: int) -> int:
    """``threads`` per op and between ops, when this process has not run TensorFlow yet; the
    number in force either way."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:                 # the runtime already started (a test, an earlier step)
        print(f"[train] TensorFlow already running: its thread pools stay as they are, not {threads}", flush=True)
    return tf.config.threading.get_intra_op_parallelism_threads()


@functools.cache
def _libm() -> ctypes.CDLL:
    # find_library runs ldconfig in a subprocess: once a process, not on every evaluation
    return ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")


def flush_denormals() -> bool:
    """Set FTZ and DAZ on this thread, as TensorFlow's pool threads have them; True when they
    are set (x86-64 with glibc; elsewhere False and nothing changes). The thread keeps them:
    numpy on it flushes denormals too, which a training or evaluation process wants, and which
    a caller that imports ``components.evaluate`` into a process of its own should know."""
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return False
    libm = _libm()
    env = ctypes.create_string_buffer(64)            # fenv_t is 32 bytes; room to spare
    if libm.fegetenv(env) != 0:
        return False
    (mxcsr,) = struct.unpack_from("<I", env.raw, _MXCSR_OFFSET)
    ctypes.memmove(ctypes.addressof(env) + _MXCSR_OFFSET, struct.pack("<I", mxcsr | _FTZ | _DAZ), 4)
    if libm.fesetenv(env) != 0:
        return False
    libm.fegetenv(env)
    return struct.unpack_from("<I", env.raw, _MXCSR_OFFSET)[0] & (_FTZ | _DAZ) == _FTZ | _DAZ
