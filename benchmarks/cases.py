"""What each suite measures: a list of :class:`Case` (one method on one problem), full or quick.

Sizes follow the benchmark issue: the seed problem, T from 100 to 4000 and B from 8 to 512 on
the seed model, features up to 16, budgets from 128 MiB to 8 GiB, five model families, and
reductions over a store larger than the reduction's memory. ``quick`` runs every suite at tiny
sizes so the test suite can run the whole harness in a couple of minutes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from jacengine.planning.methods import METHODS

JACOBIAN_METHODS = ("jacengine", "tf-eager", "tf-pfor", "tf-while", "tf-gradient-loop", "tf-causal-blocks", "jax")
QUICK_METHODS = ("jacengine", "tf-pfor")
REDUCE_METHODS = ("jacengine-reduce", "numpy-reduce")
SCALE_OUT_METHODS = ("jacengine", "jacengine-dask", "jacengine-shards")  # 1 process; 2 dask workers; 2 shards
SUITES = ("seed", "scaling-T", "scaling-B", "features", "budget", "models", "reduce", "scale-out", "methods", "speed",
          "model-kinds")
# the speed targets: JAX and a hand-written loop of TF causal blocks at every size; on the seed
# problem also TF's one-liners (at the larger sizes the while loop takes minutes and pfor runs out of memory)
SPEED_METHODS = ("jacengine", "jax", "tf-causal-blocks")
SEED_SPEED_METHODS = (*SPEED_METHODS, "tf-while", "tf-pfor")
ENGINE_METHODS = (*METHODS, "auto")  # jacengine's method= in the methods suite: every registered method
LAG_WINDOW = 50  # the methods suite's lag-layout case stores lags 0..49
DEFAULT_BUDGET = "1GiB"
MODEL_FAMILIES = ("lstm", "gru", "stacked-lstm", "causal-conv1d", "bidirectional")  # kinds of jacengine.tf.zoo
# the model-kinds suite: the seed model handed to jacengine as each kind of TensorFlow model it
# accepts (benchmarks.child.as_model_kind), Keras 3 first (the ratios' reference)
# ("-dense-head": the same maths with Dense in place of TimeDistributed(Dense), which traced
# with an open time axis computes wrong outputs and vectorises badly: docs/design.md, "Known traps")
MODEL_KINDS = ("keras", "tf_keras", "tf_keras-h5", "tf_keras-savedmodel", "savedmodel", "tf-module", "tf-function",
               "tf-function-dense-head")


@dataclasses.dataclass(frozen=True)
class Case:
    """One method on one problem; ``budget``, ``engine_method`` (jacengine's ``method=``) and
    ``max_lag`` (its lag layout) apply to jacengine only."""

    suite: str
    method: str
    model: str
    batch: int
    steps: int
    features_in: int = 1
    features_out: int = 1
    budget: str = DEFAULT_BUDGET
    units: int = 32
    repeats: int = 3
    engine_method: str = "auto"
    max_lag: int | None = None
    tf_first: bool = False  # TensorFlow imported before jacengine, oneDNN at its default (a notebook's state)
    model_kind: str = "keras"  # how the model is handed to jacengine (MODEL_KINDS)
    vouch_causal: bool = False  # jacengine's causal=True (for model kinds it cannot inspect)

    @property
    def problem(self) -> tuple[Any, ...]:
        """Cases with the same problem compute the same Jacobian and are checked against each other."""
        return self.suite, self.model, self.batch, self.steps, self.features_in, self.features_out, self.units, self.max_lag

    @property
    def label(self) -> str:
        shape = f"{self.batch}x{self.steps}x{self.features_in}"
        if self.features_out != self.features_in:
            shape += f"->{self.features_out}"
        budget = f" @ {self.budget}" if self.method.startswith("jacengine") else ""
        how = "" if self.engine_method == "auto" else f" method={self.engine_method}"
        how += f" lags<{self.max_lag}" if self.max_lag else ""
        how += " (TF imported first)" if self.tf_first else ""
        how += f" as {self.model_kind}" if self.model_kind != "keras" else ""
        how += " causal=True" if self.vouch_causal else ""
        return f"{self.suite}: {self.method}{how} {self.model} {shape}{budget}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        return cls(**json.loads(text))


def _methods(suite: str, model: str, batch: int, steps: int, features: int = 1, quick: bool = False) -> list[Case]:
    """Every Jacobian method on one problem; quick runs keep jacengine and one baseline only."""
    methods = QUICK_METHODS if quick else JACOBIAN_METHODS
    return [Case(suite, method, model, batch, steps, features, features, repeats=0 if quick else 3) for method in methods]


def suite_cases(suite: str, quick: bool = False) -> list[Case]:
    """The cases of one suite (``"all"`` for every suite), in run order."""
    if suite == "all":
        return [case for name in SUITES for case in suite_cases(name, quick)]
    repeats = 0 if quick else 3  # quick runs time the first call only
    if suite == "seed":  # every method, even in quick runs
        return [dataclasses.replace(c, repeats=repeats) for c in _methods(suite, "lstm", 2 if quick else 10, 20 if quick else 100)]
    if suite == "scaling-T":
        steps = [30] if quick else [100, 250, 500, 1000, 2000, 4000]
        return [c for t in steps for c in _methods(suite, "lstm", 2 if quick else 32, t, quick=quick)]
    if suite == "scaling-B":
        batches = [4] if quick else [8, 32, 128, 512]
        return [c for b in batches for c in _methods(suite, "lstm", b, 10 if quick else 500, quick=quick)]
    if suite == "features":
        features = [2] if quick else [1, 4, 16]
        return [c for f in features for c in _methods(suite, "lstm", 2 if quick else 8, 10 if quick else 500, f, quick=quick)]
    if suite == "budget":
        budgets = ["256MiB"] if quick else ["64MiB", "128MiB", "256MiB", "512MiB", "1GiB", "4GiB", "8GiB"]
        shapes = [(2, 20, 1)] if quick else [(32, 500, 1), (32, 1000, 1), (8, 1000, 8)]
        return [Case(suite, "jacengine", "lstm", b, t, f, f, budget=budget, repeats=0, tf_first=tf_first)
                for b, t, f in shapes for budget in budgets for tf_first in (False, True)]
    if suite == "models":
        batch, steps = (2, 10) if quick else (32, 500)
        methods = ("jacengine",) if quick else ("jacengine", "tf-pfor", "tf-while")
        return [Case(suite, method, kind, batch, steps, repeats=repeats) for kind in MODEL_FAMILIES for method in methods]
    if suite == "reduce":
        batch, steps, budget = (2, 20, "256MiB") if quick else (32, 2000, "256MiB")
        return [Case(suite, method, "lstm", batch, steps, budget=budget, repeats=repeats) for method in REDUCE_METHODS]
    if suite == "scale-out":
        batch, steps = (2, 20) if quick else (32, 1000)
        return [Case(suite, method, "lstm", batch, steps, repeats=0) for method in SCALE_OUT_METHODS]
    if suite == "speed":  # time to result at 1 GiB, first calls only
        if quick:
            return [Case(suite, method, "lstm", 2, 20, repeats=0) for method in SEED_SPEED_METHODS]
        seed = [Case(suite, method, "lstm", 10, 100, repeats=0) for method in SEED_SPEED_METHODS]
        shapes = [(32, 500, 1), (32, 1000, 1), (8, 1000, 8)]
        # (32, 1000, 1) also as a user's session runs it: TensorFlow imported first, oneDNN at its default
        session = [Case(suite, "jacengine", "lstm", 32, 1000, repeats=0, tf_first=True)]
        sizes = [Case(suite, method, "lstm", b, t, f, f, repeats=0) for b, t, f in shapes for method in SPEED_METHODS]
        return seed + sizes + session
    if suite == "methods":  # each method of jacengine, reverse first (the ratios' reference), and a lag window
        shapes = [(2, 20, 1)] if quick else [(32, 500, 1), (8, 1000, 8)]
        window = 5 if quick else LAG_WINDOW
        kinds = ("causal-conv1d",) if quick else ("lstm", "causal-conv1d")  # quick: a model every method applies to
        return [Case(suite, "jacengine", kind, b, t, f, f, repeats=0, engine_method=how, max_lag=lag)
                for kind in kinds for b, t, f in shapes
                for how, lag in [*((m, None) for m in ENGINE_METHODS), ("auto", window)]]
    if suite == "model-kinds":  # the seed problem through every model kind jacengine accepts
        batch, steps = (2, 20) if quick else (10, 100)
        kinds = [(kind, False) for kind in MODEL_KINDS] + [("tf-module", True)]
        if quick:  # one of each loader: a Keras 2 file, a SavedModel directory, a tf.function
            kinds = [("keras", False), ("tf_keras-h5", False), ("savedmodel", False), ("tf-function", False)]
        return [Case(suite, "jacengine", "lstm", batch, steps, repeats=repeats, model_kind=kind, vouch_causal=vouch)
                for kind, vouch in kinds]
    raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)} or all")
