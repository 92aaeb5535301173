"""TensorFlow as a :class:`~jacengine.backends.base.Backend`: every model kind of
:mod:`jacengine.tf.loading`, seen through :class:`~jacengine.tf.adapters.TFModel`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from jacengine.backends.base import Description
from jacengine.memory import ProcessMemory, return_large_frees_to_the_os
from jacengine.options import RunOptions
from jacengine.planning.budget import parse_budget
from jacengine.storage.inputs import Inputs
from jacengine.tf import reference
from jacengine.tf.adapters import TFModel
from jacengine.tf.introspect import PROBE_SAMPLES, PROBE_STEPS, build_spec
from jacengine.tf.loading import load_tf_model, recognises
from jacengine.tf.memory import TensorMemory, compute_device, configure_gpus
from jacengine.tf.probes import MemoryReader, TFProbing
from jacengine.tf.products import LinearFunctionals
from jacengine.tf.zoo import seed_model

# One thread per worker process: TensorFlow would otherwise start a pool as wide as the machine
# in every worker, and the workers would fight over the cores.
WORKER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
              "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass(frozen=True)
class BudgetMeter:
    """The readers a calibration measures with: TensorFlow's tensor statistics on the compute
    device, and on CPU this process's resident memory (the budgeted quantity there)."""

    tensors: MemoryReader
    process: ProcessMemory | None

    def peak(self) -> int | None:
        return self.process.peak_above_baseline() if self.process is not None else self.tensors.peak()


class TensorFlowBackend:
    name = "tensorflow"

    def recognises(self, model: Any) -> bool:
        return recognises(model)

    def worker_environment(self) -> dict[str, str]:
        # the workers use the kernels this process uses (oneDNN off unless the user's process has it on)
        return dict(WORKER_ENV, TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"))

    def configure(self, options: RunOptions) -> None:
        limit = options.gpu_memory_limit
        configure_gpus(parse_budget(limit) if limit is not None else None)

    def load(self, model: Any, options: RunOptions) -> TFModel:
        loaded = load_tf_model(model, trust_model=options.trust_model, signature=options.signature,
                               model_id=options.model_id)
        loaded.check()
        return loaded.float64() if options.precision == "float64" else loaded

    def model_hash(self, model: TFModel, input_features: int) -> str:
        return model.fingerprint(input_features)

    def save(self, model: Any, folder: Path) -> str:
        return load_tf_model(model).save(folder)

    def start_budget(self) -> BudgetMeter:
        device = compute_device()
        process = ProcessMemory() if device.startswith("CPU") else None
        if process is not None:
            return_large_frees_to_the_os()  # resident memory then tracks what blocks hold (see jacengine.memory)
            process.set_baseline()
        return BudgetMeter(TensorMemory(device), process)

    def describe(self, model: TFModel, inputs: Inputs, options: RunOptions) -> Description:
        spec, reason = build_spec(model, inputs, options)
        probe_inputs = inputs.read(0, PROBE_SAMPLES, PROBE_STEPS if spec.truncatable else None).astype(spec.compute_dtype)
        return Description(spec, reason, model.for_blocks(probe_inputs))

    def probing(self, description: Description, inputs: Inputs, meter: BudgetMeter) -> TFProbing:
        return TFProbing(description.block_model, inputs, meter.tensors, meter.process)

    def references(self, model: TFModel) -> reference.TFReferences:
        return reference.TFReferences(model)

    def directional_products(self, model: TFModel) -> LinearFunctionals:
        return LinearFunctionals(model)

    def example_model(self, x_train: np.ndarray, y_train: np.ndarray, epochs: int) -> tuple[keras.Model, float | None]:
        model = seed_model()
        if not epochs:
            return model, None
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        history = model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
        return model, float(history.history["loss"][-1])


BACKEND = TensorFlowBackend()
