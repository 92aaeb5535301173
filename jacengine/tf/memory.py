"""TensorFlow's own memory statistics and device set-up (CPU and GPU through one interface).

``tf.config.experimental.get_memory_info`` reports the peak bytes of live tensors on a device,
exactly and independently of the allocator's caching, which makes it the right probe for the
cost model's per-work term on CPU and the budgeted quantity itself on a GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import tensorflow as tf

log = logging.getLogger("jacengine")


@dataclass
class TensorMemory:
    """Peak tensor bytes on one TensorFlow device, resettable between measurements.

    Some builds keep no statistics for a device (on CPU they come with oneDNN's allocator;
    ``TF_ENABLE_ONEDNN_OPTS=0`` turns them off): ``peak()`` then returns 0 and calibration
    falls back to the observed resident peak, which is conservative.
    """

    device: str = "CPU:0"

    def reset(self) -> None:
        try:
            tf.config.experimental.reset_memory_stats(self.device)
        except (ValueError, tf.errors.OpError):
            pass

    def peak(self) -> int:
        try:
            return int(tf.config.experimental.get_memory_info(self.device)["peak"])
        except (ValueError, tf.errors.OpError):
            return 0


RETAINING_POOL_FACTOR = 2.0  # resident memory grows to well above a block's own peak over a run (budget suite)


def allocator_pool_factor() -> float:
    """How far the allocator's memory (a block's tensors) outgrows their peak because it keeps freed memory:
    :data:`RETAINING_POOL_FACTOR` when TensorFlow computes on the CPU with oneDNN, whose
    allocator does (on by default on x86 unless ``TF_ENABLE_ONEDNN_OPTS=0`` was set before
    TensorFlow was imported; jacengine sets it when it imports TensorFlow itself), else 1. Warns
    once, with the way out, when it is not 1."""
    if not compute_device().startswith("CPU") or not _onednn_enabled():
        return 1.0
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "TensorFlow runs with oneDNN, whose CPU allocator keeps the memory blocks free: jacengine plans twice "
            "the measured tensor memory of each block (smaller blocks, slower). Set TF_ENABLE_ONEDNN_OPTS=0 before "
            "TensorFlow is imported to avoid this."
        )
    return RETAINING_POOL_FACTOR


_warned = False


def _onednn_enabled() -> bool:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a private module: fall back to the switch TensorFlow reads
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").lower() not in ("0", "false")


def compute_device() -> str:
    """The device blocks run on: the first GPU when TensorFlow sees one, else the CPU."""
    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def configure_gpus(memory_limit_bytes: int | None = None, memory_growth: bool = True) -> list[str]:
    """Set up visible GPUs before first use: memory growth on (TensorFlow otherwise grabs the
    whole device), or a hard cap with a logical device of ``memory_limit_bytes``. Returns the GPU
    names configured (empty on a machine without GPUs). Must run before TensorFlow touches a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if memory_limit_bytes is not None:
            limit_mib = max(1, memory_limit_bytes // 2**20)
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mib)])
        else:
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
    return [gpu.name for gpu in gpus]
