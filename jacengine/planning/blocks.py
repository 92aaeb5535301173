"""How to compute: the chunk grid and the list of blocks. Pure Python, no TensorFlow/zarr/dask.

A block is a batch range times a run of whole t_out chunks. It writes the t_in chunks
[0, in_stop) of its rows and nothing else, so blocks never share a chunk and may run in any
order, in any process, any number of times.

For a causal model the outputs of a block ending at step t cannot depend on inputs after t, so
its Jacobian is taken with respect to the input prefix x[:, :watch_steps] only, and chunks of the
upper triangle beyond ``in_stop`` are never written (zarr returns the fill value 0 for them).
When one compiled function serves every block shape (prefixes :data:`EXACT`), ``watch_steps`` is the
whole t_in chunks the block's last row needs; otherwise it is rounded up to one of a few bucket
lengths so that the number of distinct block shapes, and of traces, stays small.

In the lag layout a block writes its rows' whole lag axis and differentiates only the window of
inputs its lags reach: ``watch_steps`` is the window's length (the longest of the block's shape
group) and ``forward_steps`` the (bucketed) prefix fed to the model; where in the prefix the
window sits is computed per block (:func:`window_start`) and does not change the shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from jacengine.errors import BudgetError
from jacengine.planning.spec import JacobianSpec


@dataclass(frozen=True)
class Block:
    """One unit of work: J[batch_start:batch_stop, row_start:row_stop, :, :in_stop, :].

    ``row_*`` index the stored t_out axis (the selection), not model time steps.
    ``in_stop`` is the written extent of the stored fourth axis: input steps ``t_in`` in the
    full layout, the whole ``lag`` axis in the lag layout (stored as ``t_in_stop`` in the
    store's plan, in every format).
    ``watch_steps`` is the input prefix differentiated (in the lag layout: the window of
    inputs); ``forward_steps`` the input length fed to the model (equal to the prefix when the
    model accepts truncated sequences).
    ``compute_batch`` x ``compute_rows`` is the shape the block is computed at: a smaller
    remainder block is padded (repeated samples/rows, discarded afterwards) to the size of the
    other blocks with the same prefix, so that it reuses their compiled function instead of
    paying another trace and holding another graph in memory.
    """

    index: int
    batch_start: int
    batch_stop: int
    row_start: int
    row_stop: int
    in_stop: int
    watch_steps: int
    forward_steps: int
    compute_batch: int
    compute_rows: int

    @property
    def shape_key(self) -> tuple[int, int, int, int]:
        """Blocks with equal keys share one compiled TensorFlow function."""
        return (self.compute_batch, self.compute_rows, self.watch_steps, self.forward_steps)

    @property
    def n_rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def n_batch(self) -> int:
        return self.batch_stop - self.batch_start


@dataclass(frozen=True)
class Plan:
    """The chunk grid of the stored array and the blocks that fill it."""

    batch_chunk: int
    t_out_chunk: int
    t_in_chunk: int
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "blocks", tuple(b if isinstance(b, Block) else Block(**b) for b in self.blocks)
        )
        if any(b.index != i for i, b in enumerate(self.blocks)):
            raise ValueError("block indices must be 0..n-1 in order")

    @property
    def grid(self) -> tuple[int, int, int]:
        """(batch, t_out, t_in) chunk sizes: everything the store layout depends on."""
        return (self.batch_chunk, self.t_out_chunk, self.t_in_chunk)

    def chunks(self, spec: JacobianSpec) -> tuple[int, int, int, int, int]:
        """The zarr chunk shape of the ``jacobian`` array for ``spec``."""
        return (self.batch_chunk, self.t_out_chunk, len(spec.f_out), self.t_in_chunk, len(spec.f_in))

    def check_alignment(self, spec: JacobianSpec) -> None:
        """Refuse a plan with a block that does not cover whole chunks: two blocks writing parts
        of one chunk would race (each rewrites the whole chunk file)."""
        b_total, rows_total, _, in_total, _ = spec.shape
        for block in self.blocks:
            for name, start, stop, chunk, total in (("batch", block.batch_start, block.batch_stop, self.batch_chunk, b_total),
                                                    ("t_out", block.row_start, block.row_stop, self.t_out_chunk, rows_total),
                                                    (spec.in_axis, 0, block.in_stop, self.t_in_chunk, in_total)):
                if start % chunk or (stop % chunk and stop != total):
                    raise BudgetError(f"block {block.index} covers {name} {start}:{stop}, not whole chunks of {chunk} "
                                      f"(axis length {total}); this plan would let blocks race on a chunk.")

    @property
    def shape_keys(self) -> list[tuple[int, int, int, int]]:
        """The distinct block shapes, in order of first use."""
        return list(dict.fromkeys(b.shape_key for b in self.blocks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_chunk": self.batch_chunk,
            "t_out_chunk": self.t_out_chunk,
            "t_in_chunk": self.t_in_chunk,
            "blocks": [_stored_block(dataclasses.asdict(b)) for b in self.blocks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        blocks = tuple(Block(**{_FIELD_OF_KEY.get(k, k): v for k, v in b.items()}) for b in data["blocks"])
        return cls(**{**data, "blocks": blocks})


_FIELD_OF_KEY = {"t_in_stop": "in_stop"}  # the store's key -> Block's field


def _stored_block(fields: dict[str, Any]) -> dict[str, Any]:
    keys = {field: key for key, field in _FIELD_OF_KEY.items()}
    return {keys.get(name, name): value for name, value in fields.items()}


def default_time_chunk(steps: int, target_chunks: int = 16) -> int:
    """A time chunk length giving about ``target_chunks`` chunks, fine enough to skip most of
    a causal upper triangle and coarse enough to keep the number of files moderate."""
    return max(1, math.ceil(steps / target_chunks))


def watch_buckets(spec: JacobianSpec, t_in_chunk: int, n_buckets: int) -> list[int]:
    """The few prefix lengths a causal block may differentiate, each a multiple of the t_in
    chunk (or the full length): about evenly spaced so the extra work of rounding a prefix up
    stays near 1/(2 n_buckets) of the total."""
    steps = spec.input_steps
    lengths = {min(steps, math.ceil(k * steps / n_buckets / t_in_chunk) * t_in_chunk) for k in range(1, n_buckets + 1)}
    return sorted(lengths | {steps})


def chunk_prefixes(spec: JacobianSpec, t_in_chunk: int) -> list[int]:
    """Every prefix that ends on the t_in chunk grid: the prefixes of exact-prefix plans."""
    steps = spec.input_steps
    return [min(steps, k * t_in_chunk) for k in range(1, math.ceil(steps / t_in_chunk) + 1)]


EXACT: Final = "exact"  # prefixes on the t_in chunk grid itself, not rounded up to buckets
Prefixes = int | Literal["exact"]  # how causal blocks' prefixes are chosen: a number of buckets, or EXACT


def prefix_lengths(spec: JacobianSpec, t_in_chunk: int, prefixes: Prefixes) -> list[int]:
    """The prefix lengths causal blocks may differentiate: every one on the t_in chunk grid
    (:data:`EXACT`), or that many buckets (:func:`watch_buckets`; on the lag layout's default
    grid, whose t_in axis is lags)."""
    if prefixes == EXACT:
        return chunk_prefixes(spec, t_in_chunk)
    assert isinstance(prefixes, int)
    return watch_buckets(spec, default_time_chunk(spec.input_steps) if spec.layout == "lag" else t_in_chunk, prefixes)


def forward_length(spec: JacobianSpec, prefix: int) -> int:
    """Input steps fed to the model for a block that needs the first ``prefix`` steps."""
    return prefix if spec.truncatable else spec.input_steps


def lag_window(spec: JacobianSpec, span: int, prefix: int) -> int:
    """Input steps a lag-layout block over ``span`` consecutive output steps differentiates."""
    assert spec.max_lag is not None
    return min(forward_length(spec, prefix), span + spec.max_lag - 1)


def window_start(spec: JacobianSpec, block: Block) -> int:
    """First input step of a lag-layout block's window: ``max_lag - 1`` steps before its first
    output step, moved to fit inside the prefix fed to the model."""
    assert spec.max_lag is not None
    wanted = spec.t_out[block.row_start] - spec.max_lag + 1
    return min(max(0, wanted), block.forward_steps - block.watch_steps)


def make_plan(
    spec: JacobianSpec,
    *,
    batch_chunk: int,
    t_out_chunk: int,
    t_in_chunk: int,
    chunks_per_block: Callable[[int], int],
    prefixes: Prefixes = 4,
) -> Plan:
    """Lay out blocks for ``spec`` on the given chunk grid: runs of output rows
    (:func:`row_runs`), each split by batch chunk into blocks (:func:`blocks_of_runs`).

    ``chunks_per_block(watch_steps)`` says how many t_out chunks fit in one block whose prefix has
    that length (the budget-aware part lives in :mod:`jacengine.planning.costmodel`). Blocks never straddle
    two prefix buckets, so every block of a bucket has the same shape except possibly the last.

    ``prefixes``: how many prefix buckets causal blocks are rounded up to (:func:`watch_buckets`),
    or :data:`EXACT` (for a block computer whose one compiled function serves every shape, full
    layout only): the t_in chunk grid itself, so that each causal block differentiates just the
    whole t_in chunks its last row needs, and a block may span any number of t_out chunks as
    long as ``chunks_per_block`` of its own prefix allows.
    """
    if min(batch_chunk, t_out_chunk, t_in_chunk) < 1:
        raise ValueError(f"chunk sizes must be positive, got {(batch_chunk, t_out_chunk, t_in_chunk)}")
    lag = spec.layout == "lag"
    if prefixes == EXACT and lag:
        raise ValueError("exact prefixes apply to the full layout only")
    runs = row_runs(ChunkPrefixes(spec, t_out_chunk, t_in_chunk, prefix_lengths(spec, t_in_chunk, prefixes)),
                    chunks_per_block, exact=prefixes == EXACT)
    return Plan(batch_chunk=batch_chunk, t_out_chunk=t_out_chunk, t_in_chunk=t_in_chunk,
                blocks=tuple(blocks_of_runs(spec, runs, batch_chunk)))


class RowRun(NamedTuple):
    """Consecutive output rows computed together: they write t_in (or lag) positions
    [0, in_stop) and differentiate (or, in the lag layout, feed) a prefix of ``watch`` steps."""

    row_start: int
    row_stop: int
    in_stop: int
    watch: int


@dataclass(frozen=True)
class ChunkPrefixes:
    """What each t_out chunk needs of the inputs, on a chunk grid with its prefix buckets."""

    spec: JacobianSpec
    t_out_chunk: int
    t_in_chunk: int
    buckets: list[int]

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.spec.t_out) / self.t_out_chunk)

    def of_chunk(self, j: int) -> tuple[int, int]:
        """(in_stop, prefix) needed by t_out chunk j: the bucket covering its last row."""
        spec = self.spec
        extent = spec.in_axis_length
        if not spec.causal:
            return extent, spec.input_steps
        last_row = min(len(spec.t_out), (j + 1) * self.t_out_chunk) - 1
        needed = spec.t_out[last_row] + 1
        in_stop = extent if spec.layout == "lag" else min(extent, math.ceil(needed / self.t_in_chunk) * self.t_in_chunk)
        return in_stop, next(length for length in self.buckets if length >= needed)


def row_runs(prefixes: ChunkPrefixes, chunks_per_block: Callable[[int], int], exact: bool) -> list[RowRun]:
    """The t_out chunks grouped into runs of as many chunks as ``chunks_per_block`` allows: within
    one prefix bucket, or (``exact`` prefixes) while a block with the prefix of its new last
    chunk still fits."""
    n_rows, n_chunks, t_out_chunk = len(prefixes.spec.t_out), prefixes.n_chunks, prefixes.t_out_chunk
    runs: list[RowRun] = []
    j = 0
    while j < n_chunks:
        watch = prefixes.of_chunk(j)[1]
        if chunks_per_block(watch) < 1:
            raise BudgetError(f"no block with a prefix of {watch} steps fits the budget")
        stop = j + 1
        if exact:
            while stop < n_chunks and chunks_per_block(prefixes.of_chunk(stop)[1]) > stop - j:
                stop += 1
            watch = prefixes.of_chunk(stop - 1)[1]
        else:
            per_block = chunks_per_block(watch)
            while stop < n_chunks and stop - j < per_block and prefixes.of_chunk(stop)[1] == watch:
                stop += 1
        runs.append(RowRun(j * t_out_chunk, min(n_rows, stop * t_out_chunk), prefixes.of_chunk(stop - 1)[0], watch))
        j = stop
    return runs


def blocks_of_runs(spec: JacobianSpec, runs: list[RowRun], batch_chunk: int) -> list[Block]:
    """Each run split by batch chunk into blocks. Blocks of one prefix (a shape group) are
    computed at one shape: the group's most rows, and in the lag layout its longest window."""
    lag = spec.layout == "lag"
    rows_per_watch: dict[int, int] = {}
    window_per_watch: dict[int, int] = {}
    for run in runs:
        rows_per_watch[run.watch] = max(rows_per_watch.get(run.watch, 0), run.row_stop - run.row_start)
        if lag:
            span = spec.t_out[run.row_stop - 1] - spec.t_out[run.row_start] + 1
            window_per_watch[run.watch] = max(window_per_watch.get(run.watch, 0), lag_window(spec, span, run.watch))
    blocks: list[Block] = []
    for run in runs:
        for batch_start in range(0, spec.batch, batch_chunk):
            blocks.append(Block(
                index=len(blocks), batch_start=batch_start, batch_stop=min(spec.batch, batch_start + batch_chunk),
                row_start=run.row_start, row_stop=run.row_stop, in_stop=run.in_stop,
                watch_steps=window_per_watch[run.watch] if lag else run.watch,
                forward_steps=forward_length(spec, run.watch), compute_batch=min(batch_chunk, spec.batch),
                compute_rows=rows_per_watch[run.watch]))
    return blocks
