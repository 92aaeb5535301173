"""`import jacengine` must stay framework-neutral and fast: it never imports TensorFlow."""

import subprocess
import sys


def test_import_does_not_import_tensorflow() -> None:
    code = "import sys, jacengine; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]
