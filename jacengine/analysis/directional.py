"""``jacengine.directional``: sums of J over chosen inputs or outputs, without computing J.

Many questions are linear in J: "how much do the first 10 input steps, together, drive each
output" is J summed over those input steps, and "what drives output steps 90-99, together" is J
summed over those outputs. Each is one forward- or reverse-mode product per batch of samples,
so it costs about as much as one gradient instead of one per output, and needs no store.
The backend is imported when the function is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr

from jacengine.analysis.reductions import NAME_ATTRIBUTE
from jacengine.backends import backend_for
from jacengine.backends.base import DirectionalProducts
from jacengine.errors import InputError, setting
from jacengine.logs import accepts_verbose
from jacengine.options import RunOptions
from jacengine.planning.selection import Selection, normalise_selection
from jacengine.planning.spec import JacobianSpec
from jacengine.progress import iterate
from jacengine.storage.inputs import Inputs, InputsLike

DEFAULT_BATCH = 64  # samples per product: memory is about one backward pass of this batch


@accepts_verbose
def directional(
    model: Any,
    inputs: InputsLike,
    *,
    over: str,
    t_in: Selection = None,
    f_in: Selection = None,
    t_out: Selection = None,
    f_out: Selection = None,
    batch_size: int = DEFAULT_BATCH,
    trust_model: bool = False,
    progress: bool | None = None,
) -> xr.Dataset:
    """Sum J over a set of inputs (for every output) or of outputs (for every input).

    ``over="inputs"``: S[b, t_out, f_out] = sum of J[b, t_out, f_out, t, f] over t in ``t_in``,
    f in ``f_in`` (default all): one Jacobian-vector product. The seed question,
    ``reduce_sum(J[:, :, :, :10], axis=3)``, is ``directional(model, x, over="inputs", t_in=slice(0, 10))``.

    ``over="outputs"``: S[b, t_in, f_in] = sum of J[b, t, f, t_in, f_in] over t in ``t_out``,
    f in ``f_out``: one vector-Jacobian product.

    Returns an ``xarray.Dataset`` with one array ``sum`` and its coordinates; its ``attrs`` name it
    (``jacengine_reduction``: ``input-sum`` or ``output-sum``) and hold the summed-over selection.
    ``progress`` shows a bar over the batches of ``batch_size`` samples (None: when stderr is a
    terminal); ``verbose`` as for :func:`jacengine.compute`.
    """
    if over not in ("inputs", "outputs"):
        raise InputError(f"{setting('over')} must be 'inputs' or 'outputs', got {over!r}.")
    if batch_size < 1:
        raise InputError(f"{setting('batch_size')} must be at least 1, got {batch_size}.")
    backend = backend_for(model)
    options = RunOptions(causal=False, trust_model=trust_model)
    loaded = backend.load(model, options)
    source = Inputs(inputs)
    source.content_hash()  # refuses NaN/Inf before any work
    spec = backend.describe(loaded, source, options).spec
    products = backend.directional_products(loaded)
    batches = iterate(_ranges(source.shape[0], batch_size), f"{over} sum", progress, unit="batch")
    if over == "inputs":
        return _input_sums(products, source, spec, batches, t_in, f_in)
    return _output_sums(products, source, spec, batches, t_out, f_out)


def _input_sums(products: DirectionalProducts, source: Inputs, spec: JacobianSpec, batches: Iterable[tuple[int, int]],
                t_in: Selection, f_in: Selection) -> xr.Dataset:
    """S[b, t_out, f_out]: one JVP per batch, with weights 1 on the chosen inputs."""
    _, steps, features = source.shape
    dtype = np.dtype(spec.compute_dtype)
    chosen_t, chosen_f = normalise_selection(t_in, steps, "t_in"), normalise_selection(f_in, features, "f_in")
    weights = np.zeros((steps, features), dtype)
    weights[np.ix_(chosen_t, chosen_f)] = 1
    parts = [products.jvp(source.read(a, b).astype(dtype), weights) for a, b in batches]
    coords = {"t_out": np.asarray(spec.t_out_coordinate), "f_out": np.arange(spec.output_features)}
    return _dataset(parts, ("batch", "t_out", "f_out"), coords, "input-sum",
                    {"t_in": list(chosen_t), "f_in": list(chosen_f), "forward_mode": products.forward_mode_works})


def _output_sums(products: DirectionalProducts, source: Inputs, spec: JacobianSpec, batches: Iterable[tuple[int, int]],
                 t_out: Selection, f_out: Selection) -> xr.Dataset:
    """S[b, t_in, f_in]: one VJP per batch, with weights 1 on the chosen outputs (one output
    step for a sequence-to-one model)."""
    _, steps, features = source.shape
    dtype = np.dtype(spec.compute_dtype)
    chosen_t = normalise_selection(t_out, spec.output_steps, "t_out")
    chosen_f = normalise_selection(f_out, spec.output_features, "f_out")
    weights = np.zeros((spec.output_steps, spec.output_features), dtype)
    weights[np.ix_(chosen_t, chosen_f)] = 1
    parts = [products.vjp(source.read(a, b).astype(dtype), weights) for a, b in batches]
    coords = {"t_in": np.arange(steps), "f_in": np.arange(features)}
    return _dataset(parts, ("batch", "t_in", "f_in"), coords, "output-sum",
                    {"t_out": list(chosen_t), "f_out": list(chosen_f), "forward_mode": products.forward_mode_works})


def _dataset(parts: list[np.ndarray], dims: tuple[str, ...], coords: dict[str, np.ndarray], name: str,
             attrs: dict[str, Any]) -> xr.Dataset:
    return xr.Dataset({"sum": (dims, np.concatenate(parts))}, coords=coords, attrs={NAME_ATTRIBUTE: name, **attrs})


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(total, start + size)) for start in range(0, total, size)]
