"""Run probe blocks on the actual model and read what they cost: TensorFlow's part of calibration.

Which blocks to probe, how to fit the cost model and how to choose a method are planning
(:mod:`jacengine.planning.calibration`, :mod:`jacengine.planning.method_choice`); this module
runs the blocks and reads two meters:

- TensorFlow's tensor statistics (:class:`TensorMemory`) give the exact peak of live tensors,
  which grows linearly with the work; where they exist they also give the share of the work
  memory that a pooling allocator keeps.
- On CPU, the process's peak resident memory above its baseline (:class:`ProcessMemory`)
  during the call also contains tracing, graph construction and allocator slack: the budgeted
  quantity there. On a GPU the budget is the device peak itself, so there is no resident term.

It also knows which methods a model cannot use without tracing them: the recurrent chain where
the model is not one (:func:`~jacengine.tf.recurrent.structure.why_not_chain`), and forward
mode on Keras' recurrent layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jacengine.memory import ProcessMemory, release_free_heap
from jacengine.planning.blocks import Block
from jacengine.planning.calibration import KnownMemory
from jacengine.planning.costmodel import CostModel, block_result_bytes
from jacengine.planning.fitting import Reading
from jacengine.planning.spec import JacobianSpec
from jacengine.storage.inputs import Inputs
from jacengine.tf.adapters import TFModel
from jacengine.tf.computers import Computer, block_computer
from jacengine.tf.memory import allocator_pool_factor
from jacengine.tf.recurrent.computer import RecurrentBlockComputer
from jacengine.tf.recurrent.structure import METHOD as RECURRENT
from jacengine.tf.recurrent.structure import describe, why_not_chain

MIN_FIXED_BYTES = 48 * 2**20  # TensorFlow's tracing and runtime never cost less than this on CPU
_RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
_RECURRENT_BASES = {"RNN", "Bidirectional"}  # Keras 3 and tf_keras alike (LSTM, GRU, SimpleRNN are RNNs)


class MemoryReader(Protocol):
    def reset(self) -> None: ...
    def peak(self) -> int: ...


@dataclass
class TFProbing:
    """Calibration's view of one TensorFlow model (:class:`~jacengine.planning.method_choice.Probing`)."""

    model: TFModel
    inputs: Inputs
    tensors: MemoryReader
    process: ProcessMemory | None  # None on a GPU

    def cannot_use(self, method: str) -> str | None:
        if method == RECURRENT:
            return why_not_chain(self.model)
        if method == "forward":
            recurrent = sorted({type(layer).__name__ for layer in self.model.layers()
                                if any(cls.__name__ in _RECURRENT_BASES for cls in type(layer).__mro__)})
            if recurrent:
                return f"Keras' {', '.join(recurrent)} raise under ForwardAccumulator in tf.function"
        return None

    def prober(self, spec: JacobianSpec, strict: bool) -> TFProber:
        return TFProber(block_computer(self.model, spec, strict=strict), self.inputs, self.tensors, self.process)

    def prior(self, spec: JacobianSpec) -> CostModel:
        return prior_cost(self.model, spec)

    def resident_bytes(self) -> int:
        return self.process.current_above_baseline() if self.process is not None else 0


def prior_cost(model: TFModel, spec: JacobianSpec) -> CostModel:
    """A pessimistic cost model from the model's layer widths, used only to size the probe."""
    itemsize = 8 if spec.compute_dtype == "float64" else 4
    width = 0
    for layer in model.layers():
        units = getattr(layer, "units", None) or getattr(layer, "filters", None)
        if isinstance(units, int):
            width += units * (1 + _RECURRENT_GATES.get(type(layer).__name__, 0))
    return CostModel(
        fixed_bytes=128 * 2**20,
        bytes_per_work=2.0 * itemsize * max(width, spec.input_features),
        trace_seconds=3.0,
        seconds_per_work=2e-8 * max(width, 1),
        pool_factor=allocator_pool_factor(),
    )


class TFProber:
    """A block computer whose calls are read by the meters (:class:`~jacengine.planning.calibration.Prober`)."""

    def __init__(self, computer: Computer, inputs: Inputs, tensors: MemoryReader, process: ProcessMemory | None) -> None:
        self.computer, self.inputs, self.tensors, self.process = computer, inputs, tensors, process
        self.fixed_floor = MIN_FIXED_BYTES if process is not None else 0
        self.pool_factor = allocator_pool_factor()

    @property
    def one_trace(self) -> bool:
        return self.computer.polymorphic  # turns False where the model needs static shapes

    @property
    def known_memory(self) -> KnownMemory | None:
        if isinstance(self.computer, RecurrentBlockComputer):
            return KnownMemory(self.computer.bytes_per_work(), self.computer.fixed_bytes())
        return None

    @property
    def summary(self) -> str:
        if isinstance(self.computer, RecurrentBlockComputer):
            return f"the model is a recurrent chain, {describe(self.computer.chain)}"
        return ""

    def run(self, block: Block) -> tuple[Reading, np.ndarray]:
        """Compute ``block`` once under the meters. The peak is less the copies of the result the
        method holds beside its work (plans add those on their own: see
        :func:`~jacengine.planning.costmodel.result_bytes`)."""
        computer, spec, process = self.computer, self.computer.spec, self.process
        x = self._inputs(block)
        self.tensors.reset()
        resident_before = 0
        if process is not None:
            process.reset_peak()
            resident_before = process.current_above_baseline()
        traces_before = computer.trace_count
        started = time.perf_counter()
        result = computer.compute(block, x)
        seconds = time.perf_counter() - started
        tensor_peak = self.tensors.peak()
        observed = process.peak_above_baseline() if process is not None else tensor_peak
        retained = 0
        if process is not None:
            # heap the block freed is reusable by the next block, not retained: return it to the OS first
            release_free_heap()
            retained = max(0, process.current_above_baseline() - resident_before)
        reading = Reading(
            work=CostModel.work(spec, block), memory_work=CostModel.work(spec, block, memory=True), seconds=seconds,
            trace_seconds=computer.last_trace_seconds if computer.trace_count > traces_before else None,
            peak_bytes=max(0, observed - int(block_result_bytes(spec, block))), tensor_bytes=tensor_peak,
            retained_bytes=retained, result_bytes=result.nbytes)
        return reading, result

    def time(self, block: Block) -> float:
        x = self._inputs(block)
        started = time.perf_counter()
        self.computer.compute(block, x)
        return time.perf_counter() - started

    def release(self) -> None:
        self.computer.release()

    def settle(self) -> None:
        self.computer.strict = False

    def _inputs(self, block: Block) -> np.ndarray:
        return self.inputs.read(block.batch_start, block.batch_stop, block.forward_steps)
