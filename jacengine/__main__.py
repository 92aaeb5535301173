"""``python -m jacengine`` is the ``jacengine`` command."""

from jacengine.entry import main

main()
