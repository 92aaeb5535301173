"""``python -m jacengine`` is the ``jacengine`` command."""

from jacengine.cli import main

main()
