"""The TensorFlow side of jacengine: model loading, causality detection, block computation.

This is the only package that imports TensorFlow; the rest of jacengine stays framework-neutral.

When TensorFlow is not imported yet, its C++ logging is quietened and its oneDNN optimisations are switched off (unless the user
set ``TF_ENABLE_ONEDNN_OPTS`` themselves): oneDNN's CPU allocator keeps its pool at the
high-water mark of every tensor shape seen, so a probe block's memory stays resident for the
rest of the run and the next shape's allocations come on top, while block times are the same
either way (the ``budget`` benchmark suite runs both). In a process that imported TensorFlow
first, :func:`jacengine.tf.memory.allocator_pool_factor` plans for the retained pool instead.

The backend itself is :mod:`jacengine.tf.backend`.
"""

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null meanwhile (C++ libraries write there directly); nothing
    changes where there is no such descriptor."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        # TensorFlow's C++ start-up lines (CUDA probing, CPU features) are noise to a jacengine
        # user, and some are printed during the import before any log level applies; errors that
        # matter reach Python as exceptions. A user's own setting, or a process that imported
        # TensorFlow itself, is left alone.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        with _stderr_silenced():
            import tensorflow  # noqa: F401
