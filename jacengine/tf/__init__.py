"""The TensorFlow side of jacengine: model loading, causality detection, block computation.

This is the only package that imports TensorFlow; the rest of jacengine stays framework-neutral.

When TensorFlow is not imported yet, its oneDNN optimisations are switched off (unless the user
set ``TF_ENABLE_ONEDNN_OPTS`` themselves): oneDNN's CPU allocator keeps its pool at the
high-water mark of every tensor shape seen, so a probe block's 700-800 MiB stay resident for the
rest of the run and the next shape's allocations come on top (measured on the seed LSTM at
(8, 1000, 8): resident after a probe 776 MiB with oneDNN, 80 MiB without; the next block peaked
at 1055 MiB against a 1 GiB budget). Block times were the same either way (20.7 s vs 20.2 s for
the seed model at (32, 500, 1)). In a process that imported TensorFlow first, set the variable
before that import to get the same effect.
"""

import os
import sys

if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
