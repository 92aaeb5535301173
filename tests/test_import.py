"""`import jacengine` must stay framework-neutral and fast: it imports neither TensorFlow nor,
until a name is used, dask (the command catches stop signals before its slow imports)."""

import subprocess
import sys


def test_import_does_not_import_tensorflow() -> None:
    code = "import sys, jacengine; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


def test_names_are_imported_on_first_use() -> None:
    code = ("import sys, jacengine; before = 'dask' in sys.modules; from jacengine import compute, StoreError; "
            "print(before, 'dask' in sys.modules, compute.__module__, sorted(jacengine.__all__) == sorted(dir(jacengine)))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "True", "jacengine.api", "True"]
