"""The TensorFlow side of jacengine: model loading, causality detection, block computation.

This is the only package that imports TensorFlow; the rest of jacengine stays framework-neutral.

When TensorFlow is not imported yet, its oneDNN optimisations are switched off (unless the user
set ``TF_ENABLE_ONEDNN_OPTS`` themselves): oneDNN's CPU allocator keeps its pool at the
high-water mark of every tensor shape seen, so a probe block's memory stays resident for the
rest of the run and the next shape's allocations come on top, while block times are the same
either way (the ``budget`` benchmark suite runs both). In a process that imported TensorFlow
first, :func:`jacengine.tf.memory.allocator_pool_factor` plans for the retained pool instead.

The backend itself is :mod:`jacengine.tf.backend`.
"""

import os
import sys

if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
