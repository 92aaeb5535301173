"""``method="auto"``: the fastest method that works for a model, calibrated, and why.

Framework-free planning: the backend's :class:`Probing` says which methods a model cannot use
(without tracing anything) and makes a :class:`~jacengine.planning.calibration.Prober` per
method; this module decides what to try, in this order, tracing as little as it can (a pfor
trace costs seconds):

0. A structured method (``recurrent``) is taken, with nothing traced, when the model qualifies
   and its computer's reading agrees with the model and fits the budget: it does the causal
   floor's work in dense matmuls, so no generic method can beat it. Otherwise the reason (the
   first layer that keeps the model from qualifying) joins the method line.
1. A generic method the backend rules out (``forward`` on Keras' recurrent layers) is left out
   without a trace.
2. ``reverse-loop`` (VJPs in a while loop) is measured first where it may win (a small problem
   or a small budget, :func:`loop_may_win`): its trace is the cheapest. If its whole predicted
   run takes less than :data:`PFOR_TRACE_FACTOR` times its own trace, no pfor method can win
   (their trace builds the same gradient graph and then vectorises it), so it is chosen without
   tracing them: the small-problem fast path. Nor are they traced when the budget is below
   :data:`PFOR_TRACE_MEMORY_FACTOR` times the loop's first probe's peak: a pfor trace alone
   would take most of it.
3. Otherwise the pfor methods are measured too. A method that raises, or for which pfor falls
   back to a while loop, is dropped with one log line naming why; of the pfor methods that work
   and fit the budget the one with the shortest predicted run wins, the loop (measured now if
   it was not) only when none does; the winner alone goes on to measure larger blocks
   (:func:`~jacengine.planning.calibration.refine`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from typing import Protocol

from jacengine.errors import BudgetError, MethodUnsupported
from jacengine.planning import calibration
from jacengine.planning.calibration import LOOP_FIRST, CalibratedMethod, Prober
from jacengine.planning.costmodel import PLANNED_FRACTION, CostModel, block_work
from jacengine.planning.methods import GENERIC_METHODS, METHODS
from jacengine.planning.spec import JacobianSpec

log = logging.getLogger("jacengine")

STRUCTURED_METHODS = tuple(name for name, method in METHODS.items() if method.structured)
PFOR_METHODS = tuple(name for name, method in METHODS.items() if method.vectorised)  # measured after the loop
# A pfor trace builds the loop's gradient graph and then vectorises it, so it costs several times
# the loop's trace (the speed benchmark's profile shows both); a loop run shorter than this many
# of its own traces cannot be beaten by a method that must trace first.
PFOR_TRACE_FACTOR = 3.0
# Likewise a pfor trace's peak is several times the loop's first probe's: below this many of
# those peaks no pfor method is traced, so a small budget is not spent on a trace alone.
PFOR_TRACE_MEMORY_FACTOR = 3.0
# The loop is measured only where it may win: small problems (at most this much time work; the
# seed problem is well below) or small budgets.
LOOP_FAST_PATH_MAX_WORK = 1_000_000
LOOP_BUDGET_BELOW = 512 * 2**20


class Probing(Protocol):
    """What a backend offers calibration for one described model."""

    def cannot_use(self, method: str) -> str | None:
        """Why ``method`` is bound to fail for the model, found without tracing; None when it may work."""
        ...

    def prober(self, spec: JacobianSpec, strict: bool) -> Prober:
        """A prober of ``spec.method``; raises :class:`~jacengine.errors.MethodUnsupported`
        where the method does not work. A ``strict`` one also raises on the first block the
        method computes slowly (pfor falling back to a while loop)."""
        ...

    def prior(self, spec: JacobianSpec) -> CostModel:
        """A pessimistic cost model from the model's size alone, to size the first probe."""
        ...

    def resident_bytes(self) -> int:
        """The budgeted memory held now, above the baseline (0 where it is not resident memory)."""
        ...


def calibrate(probing: Probing, spec: JacobianSpec, budget_bytes: int, method: str) -> tuple[CalibratedMethod, str]:
    """``method`` (or the one ``"auto"`` chooses) calibrated within the budget, and the method line."""
    if method == "auto":
        return choose_method(probing, spec, budget_bytes)
    spec = replace(spec, method=method)
    return calibration.calibrate_method(probing.prober(spec, strict=False), spec, probing.prior(spec), budget_bytes), \
        f"method {method} (as requested)"


def choose_method(probing: Probing, spec: JacobianSpec, budget_bytes: int) -> tuple[CalibratedMethod, str]:
    """The fastest method that works for the model, calibrated; and a one-line reason."""
    dropped = []
    for method in STRUCTURED_METHODS:
        why_not = probing.cannot_use(method)
        if why_not is None:
            structured = replace(spec, method=method)
            try:
                prober = probing.prober(structured, strict=True)
                chosen = calibration.calibrate_method(prober, structured, probing.prior(structured), budget_bytes)
            except MethodUnsupported as refusal:
                why_not = refusal.reason
            except BudgetError:
                why_not = "does not fit the budget"
            else:
                return chosen, f"method {method} (auto: {prober.summary}; nothing traced)"
        log.info("method auto: %s does not apply (%s); trying the generic methods", method, why_not)
        dropped.append(f"{method}: {why_not}")
    return _GenericChoice(probing, spec, budget_bytes, dropped).choose()


@dataclass
class _GenericChoice:
    """The generic methods measured for ``method="auto"``, with what ruled others out."""

    probing: Probing
    spec: JacobianSpec
    budget_bytes: int
    dropped: list[str]
    working: list[tuple[CalibratedMethod, int]] = field(default_factory=list)  # with the resident memory then
    budget_refusals: list[BudgetError] = field(default_factory=list)

    def choose(self) -> tuple[CalibratedMethod, str]:
        """The fastest generic method that works, calibrated; and a one-line reason."""
        loop = self.measure(LOOP_FIRST) if loop_may_win(self.spec, self.budget_bytes) else None
        if loop is not None and self.seconds(loop) <= PFOR_TRACE_FACTOR * loop.cost.trace_seconds:
            self.dropped.append(f"pfor methods not traced: the loop's whole run is predicted within "
                                f"{PFOR_TRACE_FACTOR:g}x its trace")
        elif loop is not None and loop.largest is not None \
                and PFOR_TRACE_MEMORY_FACTOR * loop.largest.peak_bytes > PLANNED_FRACTION * self.budget_bytes:
            self.dropped.append(f"pfor methods not traced: their trace is predicted to need "
                                f"{PFOR_TRACE_MEMORY_FACTOR:g}x the loop's first probe, more than the budget")
        else:
            for method in PFOR_METHODS:
                why_not = self.probing.cannot_use(method)
                if why_not:
                    self.dropped.append(f"{method}: {why_not}")
                else:
                    self.measure(method)
        if not self.working and loop is None:  # the last rung: works wherever gradients do
            self.measure(LOOP_FIRST)
        if not self.working:
            if self.budget_refusals:
                raise self.budget_refusals[0]  # it names the minimum budget
            raise MethodUnsupported("auto", "no method works for this model: " + "; ".join(self.dropped))
        return self._refine_fastest()

    def measure(self, method: str) -> CalibratedMethod | None:
        """``method``'s first probe, or None (and why, in ``dropped``) where it does not work or fit."""
        assert method in GENERIC_METHODS
        spec = replace(self.spec, method=method)
        try:
            candidate = calibration.first_probe(self.probing.prober(spec, strict=True), spec, self.probing.prior(spec),
                                    self.budget_bytes)
        except MethodUnsupported as why:
            self.dropped.append(f"{method}: {why.reason}")
            log.info("method auto: %s does not work for this model (%s); trying the next method", method, why.reason)
            return None
        except BudgetError as refusal:
            self.budget_refusals.append(refusal)
            self.dropped.append(f"{method}: does not fit the budget")
            return None
        self.working.append((candidate, self.probing.resident_bytes()))
        return candidate

    def seconds(self, candidate: CalibratedMethod) -> float:
        return candidate.cost.plan_seconds(candidate.spec, candidate.plan)

    def _refine_fastest(self) -> tuple[CalibratedMethod, str]:
        # Beyond the fast path a pfor method that works and fits wins: the loop's rate on a sliver
        # is not comparable with pfor's (the loop vectorises over samples only, pfor over rows too,
        # so pfor's rate improves with block size where the loop's does not).
        pfor = [entry for entry in self.working if entry[0].spec.method in PFOR_METHODS]
        chosen, resident_then = min(pfor or self.working, key=lambda entry: self.seconds(entry[0]))
        for other, _ in self.working:
            if other is not chosen:
                other.prober.release()
        compared = ", ".join(f"{c.spec.method} {self.seconds(c):.1f} s" for c, _ in self.working)
        reasons = [f"predicted from first probes {compared}"] if len(self.working) > 1 else []
        # probing a later candidate left traces resident that the chosen method's measurement did
        # not see: add them to its fixed term (refine plans with it)
        leftover = self.probing.resident_bytes() - resident_then
        if leftover > 0:
            chosen = dataclasses.replace(chosen, cost=replace(chosen.cost, fixed_bytes=chosen.cost.fixed_bytes + leftover))
        chosen = calibration.refine(chosen, self.budget_bytes)
        return chosen, f"method {chosen.spec.method} (auto: {'; '.join([*reasons, *self.dropped]) or 'the only candidate'})"


def loop_may_win(spec: JacobianSpec, budget_bytes: int) -> bool:
    """Whether measuring the loop first can pay: on a small problem (its fast path) or a small
    budget (where a pfor trace may not fit). Otherwise it would cost a trace and probes only to
    lose to pfor, which is faster per unit of work on large blocks."""
    loop = replace(spec, method=LOOP_FIRST)
    rows = [block_work(loop, 1, 1, prefix) for prefix in (t + 1 if spec.causal else spec.input_steps for t in spec.t_out)]
    return sum(rows) <= LOOP_FAST_PATH_MAX_WORK or budget_bytes < LOOP_BUDGET_BELOW
