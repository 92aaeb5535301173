"""jacengine's benchmark harness: ``python -m benchmarks run --suite NAME`` (see ``--help``).

Modules: ``cases`` (what each suite measures), ``child`` (runs one case in a fresh process),
``runner`` (subprocesses under a memory watchdog and time limit, agreement checks, machine
description), ``report`` (Markdown, plots, the generated section of docs/performance.md), ``jax_lstm`` (the JAX baseline).
"""
